"""What a run shows in the terminal: a step bar (or plain progress lines off a terminal) and the end-of-run summary.

Cluster jobs write stdout to a file, where a progress bar is either invisible or a wall of carriage
returns; :class:`ProgressLines` prints one plain line every few percent instead. The summary at the
end says where the run went, what it reached, which phase changes were found (read from the run's
``summary.json``, the one place they are computed) and what to run next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

HEADLINE_PREFIXES = ("val/", "train/loss")
HEAD_METRICS_SHOWN = ("task/label_to_exemplar", "task/query_to_match", "repeat/induction", "random/prev_token")


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = float(v)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _log_dir(trainer: L.Trainer) -> str | None:
    """The run folder, read from the logger (``trainer.log_dir`` is a collective under DDP: not for rank 0 alone)."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return str(logger.log_dir)
    return None


def _headline(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """``train/loss`` and the ``val/*`` scalars, in a stable order (accuracies first)."""
    items = [(k, x) for k, v in metrics.items() if k.startswith(HEADLINE_PREFIXES) and (x := _scalar(v)) is not None]
    return sorted(items, key=lambda kv: (not kv[0].startswith("val/"), not kv[0].endswith("acc"), kv[0]))


class StepProgressBar(TQDMProgressBar):
    """The terminal bar counts optimizer steps (``step 1200/3000``), not an endless epoch, and hides ``v_num``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.train_progress_bar.reset(total=total)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("step")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total or 0):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class ProgressLines(Callback):
    """One plain-text line per ``every`` optimizer steps (default: 5 % of ``max_steps``), for logs that are files.

    ``step 600/3000 (20%)  train/loss 1.52  val/ic/acc 0.50 ...  11.8 steps/s  eta 3m23s``
    """

    def __init__(self, every: int = 0) -> None:
        self.every = every
        self._t0 = 0.0
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0 = time.monotonic(), trainer.global_step
        if not self.every:
            self.every = max(1, trainer.max_steps // 20) if trainer.max_steps and trainer.max_steps > 0 else 100
        if trainer.is_global_zero:
            where = _log_dir(trainer) or trainer.default_root_dir
            print(f"training {where}: steps {trainer.global_step}..{trainer.max_steps}, a line every {self.every} steps", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        elapsed = time.monotonic() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 else float("nan")
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        parts += [f"{k} {v:.4g}" for k, v in _headline(dict(trainer.callback_metrics))]
        if math.isfinite(rate) and rate > 0:
            parts.append(f"{rate:.1f} steps/s")
            if total:
                parts.append(f"eta {_duration((total - step) / rate)}")
        print("  ".join(parts), flush=True)


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def _command(name: str) -> str:
    """``name`` as the running interpreter's environment has it (``.venv/bin/clamp``), so a hint works
    without activating the venv; the bare name when that is what PATH finds anyway."""
    import shutil
    import sys

    here = Path(sys.executable).parent / name
    if not here.is_file() or shutil.which(name) == str(here):
        return name
    return _rel(here)


def _phase_line(curve: str, pc: dict[str, Any]) -> str:
    return f"  {curve:<34} {pc['before']:.3g} -> {pc['after']:.3g}   onset {pc['onset']:.0f}, midpoint {pc['midpoint']:.0f}, end {pc['end']:.0f}"


def run_summary_text(run_dir: Path, summary: dict[str, Any] | None, fallback_metrics: dict[str, Any] | None = None) -> str:
    """The end-of-run summary: folder, headline metrics, phase changes (from ``summary.json``), next commands."""
    rd = _rel(run_dir)
    logdir = _rel(run_dir.parent.parent)
    lines = [f"run folder: {rd}"]
    if summary is not None and summary.get("complete") is False:
        lines[0] += f"   (INCOMPLETE: stopped at step {summary.get('step')})"
    final = (summary or {}).get("final") or fallback_metrics or {}
    head = _headline(final)
    if head:
        step = (summary or {}).get("step")
        lines += ["", "final metrics" + (f" (step {step}):" if step is not None else ":")]
        lines += [f"  {k:<34} {v:.4g}" for k, v in head]
    if summary is not None:
        phases = summary.get("phase_changes") or {}
        every = summary.get("phase_changes_all") or {c: [pc] for c, pc in phases.items() if pc}  # older summaries: one per curve
        main = [(c, pc) for c, found in every.items() if c.startswith(HEADLINE_PREFIXES) for pc in found]
        lines += ["", "phase changes (logistic fit; see clamp.metrics.phase):"]
        lines += [_phase_line(c, pc) for c, pc in main] or ["  none detected in val/* or train/loss"]
        tops = summary.get("top_heads") or {}
        shown = [(m, tops[m][0]) for m in HEAD_METRICS_SHOWN if tops.get(m)]
        if shown:
            lines += ["", "top heads at the end:"]
            for metric, top in shown:
                pc = phases.get(f"{metric}/{top['head']}")
                when = f", phase change midpoint {pc['midpoint']:.0f}" if pc else ""
                lines.append(f"  {metric:<34} {top['head']} {top['score']:.3f}{when}")
    clamp, python, tensorboard = (_command(n) for n in ("clamp", "python", "tensorboard"))
    lines += [
        "",
        "next:",
        f"  {tensorboard} --logdir {logdir}",
        f"  {clamp} report {rd} --out reports/{run_dir.parent.name}",
        f"  {python} -c \"import clamp; run = clamp.load_run('{rd}'); print(run.summary['final'])\"",
        f"  {clamp} fit --resume {rd} --trainer.max_steps <more steps>",
    ]
    return "\n".join(lines)


def print_run_summary(trainer: L.Trainer) -> None:
    """Print :func:`run_summary_text` for a finished ``trainer`` (rank zero; nothing without a log folder)."""
    log_dir = _log_dir(trainer) if trainer.is_global_zero else None
    if log_dir is None:
        return
    run_dir = Path(log_dir)
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else None
    print("\n" + run_summary_text(run_dir, summary, dict(trainer.callback_metrics)), flush=True)


#: loggers of Lightning's set-up lines (seed, accelerators, tips), identical for every member
SET_UP_LOGGERS = ("lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


@contextlib.contextmanager
def quiet_set_up() -> Iterator[None]:
    """Silence Lightning's set-up boilerplate (seed, GPU/TPU available, tips, the CLI's args warning)
    where it would repeat: an ensemble's 2nd and later members, a plain sweep's in-process runs.
    Warnings and errors of other kinds still show."""
    loggers = [logging.getLogger(n) for n in SET_UP_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
