"""``clamp sweep --ensemble N``: group a sweep's runs into ensembles and train each group in one process.

Runs may share an ensemble when their configs differ only in the seed and the interventions
(``ClampCallback`` s) — the rest (architecture, optimizer, data, trainer settings, other
callbacks) must be equal. Each member is built exactly as ``clamp fit --config <run>/run.yaml``
builds it (the same parser, seed, initialisation, data module and callbacks), so a member's run
folder matches the separate run's, and its curves do within floating-point tolerance.

Resuming: an unfinished run with ``checkpoints/last.ckpt`` (written by an ensemble or by
``clamp fit``) continues from it, as ``clamp sweep`` resumes an ordinary run; its event files are
kept and appended to (readers take the latest write per tag and step). Members of one ensemble
step in lockstep, so runs are grouped by the step they start from as well: runs resuming from
different steps train in different ensembles, each from its own checkpoint, so no run repeats or
skips a step. A run without a checkpoint starts at step 0 (its stale event files, from an attempt
that never checkpointed, are dropped); a checkpoint that cannot be resumed is an error naming the
run, never a silent restart. An edited config is checked against the run's ``config.yaml`` and the
checkpoint by the one rule and message of ``clamp fit --resume`` (:mod:`clamp.resume`).

Members fail alone: each run is built and validated (its config, callbacks, interventions, data
module) before the ensemble is, so an invalid run is named with its own error while the valid ones
train; a member that diverges stops alone (:mod:`clamp.ensemble.trainer`). Either way the sweep
counts exactly those runs as failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from clamp.console import quiet_set_up
from clamp.ensemble.trainer import EnsembleError, EnsembleTrainer, LoopSettings, Member, read_checkpoint
from clamp.interventions.callback import ClampCallback
from clamp.metrics.callback import EmergenceCallback
from clamp.preemption import received_signal
from clamp.resume import check_run_config
from clamp.sweep import ConditionRecord, Run, load_sweep

MEMBER_CALLBACKS = (ClampCallback, EmergenceCallback, ConditionRecord)  # run per member, unchanged
LOOP_CALLBACKS = (ModelCheckpoint, LearningRateMonitor, ProgressBar, ModelSummary, SaveConfigCallback)  # done by the loop itself
PER_MEMBER_KEYS = ("seed_everything", "experiment")


def ensemble_key(config: dict[str, Any]) -> str:
    """What runs sharing an ensemble must agree on: the config without seed, logger, clamps and record."""
    cfg = {k: v for k, v in config.items() if k not in PER_MEMBER_KEYS}
    trainer = dict(cfg.get("trainer") or {})
    trainer.pop("logger", None)
    trainer["callbacks"] = [
        c for c in trainer.get("callbacks") or [] if not (isinstance(c, dict) and str(c.get("class_path", "")).split(".")[-1] in ("ClampCallback", "ConditionRecord"))
    ]
    cfg["trainer"] = trainer
    return json.dumps(cfg, sort_keys=True, default=str)


def resume_step(run: Run) -> int:
    """The step ``run`` starts from: its checkpoint's if it is unfinished and has one, else 0."""
    if run.status() != "resume":
        return 0
    return int(read_checkpoint(run.last_ckpt, run.dir, mmap=True)["global_step"])


def plan_ensembles(runs: Sequence[Run], size: int) -> list[list[Run]]:
    """Runs grouped by :func:`ensemble_key` and start step (:func:`resume_step`), in sweep order, in
    chunks of at most ``size``. A run whose checkpoint cannot be read forms a group of its own, whose
    training then fails with the reason."""
    groups: dict[tuple[str, object], list[Run]] = {}
    for run in runs:
        try:
            start: object = resume_step(run)
        except EnsembleError:
            start = ("unreadable", str(run.dir))
        groups.setdefault((ensemble_key(run.config), start), []).append(run)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


class MemberFailures(EnsembleError):
    """Runs of an ensemble that failed alone (an invalid config, divergence) while the others trained."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)  # run folder -> its own error, one line
        super().__init__("; ".join(self.errors.values()))


DATA_CONTRACT = ("train_dataloader", "eval_split_names", "eval_set", "eval_batch_size")  # what the loop batches by


def _check_datamodule(run: Run, dm: Any) -> None:
    missing = [a for a in DATA_CONTRACT if not hasattr(dm, a)]
    if missing:
        raise EnsembleError(
            f"run {run.dir}: data module {type(dm).__name__} lacks {missing}, which the ensemble loop batches by "
            f"(as SyntheticDataModule and clamp.text.TextDataModule have them); run it without --ensemble"
        )


def _build_member(run: Run) -> tuple[Member, Any]:
    """Parse and instantiate ``run.yaml`` as ``clamp fit`` would (same seed, init, any data module,
    callbacks) and validate its callbacks as ``clamp fit`` does before training; no fit."""
    from lightning import LightningDataModule

    from clamp.cli import ClampCLI
    from clamp.training import TrainingModule

    cli = ClampCLI(
        TrainingModule, LightningDataModule, subclass_mode_data=True, args=["--config", str(run.config_path)], run=False,
        save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False},
    )  # fmt: skip
    trainer = cli.trainer
    _check_datamodule(run, cli.datamodule)
    unsupported = [type(cb).__name__ for cb in trainer.callbacks if not isinstance(cb, MEMBER_CALLBACKS + LOOP_CALLBACKS)]
    if unsupported:
        supported = sorted(c.__name__ for c in MEMBER_CALLBACKS + (ModelCheckpoint, LearningRateMonitor))
        raise EnsembleError(f"run {run.dir}: callbacks {unsupported} cannot run in an ensemble; supported: {supported}")
    problems = []
    if trainer.world_size != 1:
        problems.append(f"world_size={trainer.world_size} (ensembles run on one device)")
    if trainer.accumulate_grad_batches != 1:
        problems.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches} (valid: 1)")
    if str(trainer.precision) not in ("32-true", "32"):
        problems.append(f"precision={trainer.precision!r} (valid: '32-true')")
    if not isinstance(trainer.val_check_interval, int) or trainer.check_val_every_n_epoch is not None:
        problems.append(f"val_check_interval={trainer.val_check_interval!r} with check_val_every_n_epoch={trainer.check_val_every_n_epoch} (valid: an int step count with null)")
    if not trainer.max_steps or trainer.max_steps < 0:
        problems.append(f"max_steps={trainer.max_steps} (valid: a positive step count)")
    if problems:
        raise EnsembleError(f"run {run.dir}: the ensemble loop does not support " + "; ".join(problems))
    for cb in trainer.callbacks:  # sites, ops, schedules, references: as `clamp fit` checks them before training
        check = getattr(cb, "check", None)
        if callable(check):
            check(trainer, cli.model, cli.datamodule)
    member = Member(
        module=cli.model,
        datamodule=cli.datamodule,
        callbacks=[cb for cb in trainer.callbacks if isinstance(cb, MEMBER_CALLBACKS)],
        logger=trainer.logger,
        run_dir=Path(trainer.logger.log_dir),
        checkpoint=any(isinstance(cb, ModelCheckpoint) for cb in trainer.callbacks),
        name=f"{run.condition}/seed{run.seed}",
    )
    if run.status() == "resume":  # the one resume rule of clamp fit, before config.yaml is rewritten
        check_run_config(yaml.safe_load(cli.parser.dump(cli.config, skip_none=False)), run.last_ckpt, error=EnsembleError)
    for cb in trainer.callbacks:
        if isinstance(cb, SaveConfigCallback):
            cb.setup(trainer, cli.model, "fit")  # config.yaml, as clamp fit writes it
    return member, trainer


def _settings(trainer: Any) -> LoopSettings:
    return LoopSettings(
        max_steps=int(trainer.max_steps),
        val_check_interval=int(trainer.val_check_interval),
        log_every_n_steps=int(trainer.log_every_n_steps),
        gradient_clip_val=trainer.gradient_clip_val,
        gradient_clip_algorithm=str(trainer.gradient_clip_algorithm or "norm"),
        device=trainer.strategy.root_device,
    )


def _clear_partial(run: Run) -> None:
    """A run without a checkpoint starts at step 0: drop the event files of an attempt that never checkpointed."""
    for path in list(run.dir.glob("events.out.tfevents.*")) + list((run.dir / "checkpoints").glob("*.ckpt")):
        path.unlink()


def train_ensemble(runs: Sequence[Run]) -> None:
    """Train ``runs`` as one ensemble, resuming those with a checkpoint (raises :class:`EnsembleError`
    if they cannot share one, e.g. resume steps that differ, or a checkpoint that cannot be resumed).

    Each run is built and validated first: the valid ones train, and :class:`MemberFailures` then
    names each invalid or diverged run with its own error."""
    resume = [run.status() == "resume" for run in runs]
    if any(resume):
        steps = {str(run.dir): resume_step(run) for run in runs}
        if len(set(steps.values())) > 1:
            raise EnsembleError(f"runs start from different steps {steps}; members of one ensemble step in lockstep: train them in separate ensembles")
    from clamp.cli import one_line

    errors: dict[str, str] = {}
    valid: list[tuple[Run, Member, Any]] = []
    for i, (run, res) in enumerate(zip(runs, resume)):
        try:
            if not res:
                _clear_partial(run)
            with quiet_set_up() if i else contextlib.nullcontext():
                member, trainer = _build_member(run)
        except Exception as e:  # noqa: BLE001 (an invalid member fails alone, with its own error)
            text = one_line(e)
            errors[str(run.dir)] = text if str(run.dir) in text else f"run {run.dir}: {text}"
            continue
        if res:
            member.resume_from = run.last_ckpt
        valid.append((run, member, trainer))
    if valid:
        settings = [_settings(t) for _, _, t in valid]
        for (run, _, _), s in zip(valid[1:], settings[1:]):
            if s != settings[0]:
                raise EnsembleError(f"run {run.dir}: trainer settings {s} differ from {valid[0][0].dir}: {settings[0]}")
        loop = EnsembleTrainer([m for _, m, _ in valid], settings[0])
        loop.fit()
        errors.update({str(valid[i][0].dir): f"run {valid[i][0].dir}: {why}" for i, why in loop.stopped.items()})
    if errors:
        raise MemberFailures(errors)


def _train_group(runs: list[Run]) -> list[tuple[Run, str | None]]:
    try:
        train_ensemble(runs)
    except MemberFailures as e:  # the others trained
        return [(run, e.errors.get(str(run.dir))) for run in runs]
    except Exception as e:  # noqa: BLE001 (one failed ensemble must not stop the sweep)
        return [(run, f"{type(e).__name__}: {e}") for run in runs]
    return [(run, None) for run in runs]


def _train_group_subprocess(runs: list[Run]) -> list[tuple[Run, str | None]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = runs[0].dir.parent / f"ensemble_{runs[0].dir.name}.log"
    cmd = [sys.executable, "-m", "clamp.ensemble.runner", runs[0].sweep_file, "--save_dir", str(runs[0].dir.parents[2]), *(str(r.dir) for r in runs)]
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return [(run, None if rc == 0 or run.status() == "done" else f"ensemble exit status {rc} (see {log})") for run in runs]


def run_ensembles(runs: Sequence[Run], size: int, jobs: int = 1) -> Iterator[tuple[Run, str | None]]:
    """Train ``runs`` as ensembles of up to ``size`` members; ``jobs`` > 1 runs that many ensembles as 1-thread processes."""
    groups = plan_ensembles(runs, size)
    if jobs == 1:
        for group in groups:
            yield from _train_group(group)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for results in pool.map(_train_group_subprocess, groups):
            yield from results


def main(argv: list[str] | None = None) -> None:
    """``python -m clamp.ensemble.runner SWEEP --save_dir DIR RUN_DIR...``: one ensemble of a sweep (what ``--jobs`` launches)."""
    args = list(sys.argv[1:] if argv is None else argv)
    sweep, save_dir, dirs = args[0], args[2], set(args[3:])
    runs = [r for r in load_sweep(sweep, save_dir) if str(r.dir) in dirs]
    if len(runs) != len(dirs):
        raise SystemExit(f"run folders {sorted(dirs - {str(r.dir) for r in runs})} are not in sweep {sweep}")
    try:
        train_ensemble(runs)
    except MemberFailures as e:  # the others finished (condition.json says which)
        for err in e.errors.values():
            print(f"failed: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except SIGTERMException:  # checkpointed at the step the signal arrived; exit as `clamp fit` does
        raise SystemExit(128 + int(received_signal() or signal.SIGTERM)) from None


if __name__ == "__main__":
    main()
