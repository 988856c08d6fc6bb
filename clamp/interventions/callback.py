"""``ClampCallback``: interventions throughout training, driven by the optimizer step.

Lifecycle: the engine is built (and the whole intervention list validated) in ``setup``, so bad
sites, ops or schedules fail before the first step; references are loaded in ``on_fit_start``
on the module's device (each DDP rank holds its own); hooks are removed in ``teardown``.
The checkpointed state holds the release steps of metric-driven schedules, running means and
the run's initial weights when a ``reference: init`` clamp needs them, so a resumed run
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from clamp.interventions.engine import Intervention, InterventionEngine, as_intervention


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


class ClampCallback(Callback):
    """Apply a list of :class:`Intervention` s during training (and validation / probes).

    Args:
        interventions: what to clamp, how, and when (see :class:`Intervention`).
        seed: seeds the randomness of ``noise``, ``resample`` and ``patch`` per step.
        log_alpha: log each intervention's alpha as ``clamp/alpha/<name>`` so curves can be read against it.
    """

    def __init__(self, interventions: list[Intervention], seed: int = 0, log_alpha: bool = True) -> None:
        self.interventions = [as_intervention(i) for i in interventions]
        self.seed = seed
        self.log_alpha = log_alpha
        self.engine: InterventionEngine | None = None
        self._init_state: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._last_metrics: dict[str, float] = {}
        self._last_alphas: tuple[int | None, dict[str, float] | None] = (None, None)

    @property
    def state_key(self) -> str:
        digest = hashlib.sha1(json.dumps([asdict(i) for i in self.interventions], sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"ClampCallback[{digest}]"

    def config_summary(self) -> list[dict[str, Any]]:
        """Plain-data description of the interventions (for hparams / reports)."""
        return [asdict(i) for i in self.interventions]

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.engine is None:
            self.engine = InterventionEngine(pl_module.model, self.interventions, seed=self.seed)
            self._check_task_fields(getattr(getattr(trainer, "datamodule", None), "task", None))
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    def _check_task_fields(self, task: Any) -> None:
        """Batch-aware interventions need fields the task must provide: say so before the first step."""
        assert self.engine is not None
        needed = self.engine.needed_fields()
        if not needed or task is None or not hasattr(task, "sample"):
            return
        import numpy as np

        fields = set(task.sample(np.random.default_rng(0), 2, "train"))  # a throwaway batch: only its keys matter
        missing = [f for f in needed if f not in fields]
        if missing:
            users = sorted({b.spec.label for b in self.engine.bound if set(b.fields) & set(missing) or (b.nested is not None and set(b.nested.needed_fields()) & set(missing))})
            raise ValueError(f"interventions {users} need batch field(s) {missing}, which task {type(task).__name__} does not provide; its batches have {sorted(fields)}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.engine is not None
        if "init" in self.engine.reference_keys() and self._init_state is None:
            if trainer.ckpt_path is not None:  # weights are already the checkpoint's here, not the init
                raise RuntimeError("a `reference: init` clamp needs the run's initial weights, but this run resumed from a checkpoint that does not hold them")
            self._init_state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        self.engine.load_references(self._init_state, device=pl_module.device)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is not None and not self.engine.references and self.engine.reference_keys():
            self.engine.load_references(self._init_state, device=pl_module.device)  # validate-only runs
        self._set(trainer, "val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is None:
            return
        self._last_metrics.update(_scalar_metrics(trainer.callback_metrics))
        # latch releases now, before a checkpoint of this validation is written
        self.engine.observe(trainer.global_step, self._last_metrics)
        self.engine.set_mode("train")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.engine is not None:
            self.engine.set_batch(batch)  # batch-aware values (ctx.field) read this batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.engine is not None:
            self.engine.set_batch(batch)
        alphas = self._set(trainer, "train")
        if self.log_alpha and alphas:
            self._log_alphas(trainer, alphas)

    def _log_alphas(self, trainer: L.Trainer, alphas: dict[str, float]) -> None:
        """Log at the trainer's cadence and on both sides of every change, so TensorBoard draws exact steps."""
        step = trainer.global_step
        emitted_step, prev = self._last_alphas
        changed = prev is not None and prev != alphas
        if changed and emitted_step != step - 1 and step > 0:
            self._emit(trainer, prev, step - 1)
        if prev is None or changed or step % max(1, trainer.log_every_n_steps) == 0:
            self._emit(trainer, alphas, step)
            emitted_step = step
        self._last_alphas = (emitted_step, dict(alphas))

    @staticmethod
    def _emit(trainer: L.Trainer, alphas: Mapping[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"clamp/alpha/{k}": v for k, v in alphas.items()}, step=step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.engine is not None:
            self.engine.detach()

    @contextmanager
    def probing(self, trainer: L.Trainer) -> Iterator[None]:
        """Run a block (e.g. emergence probes) with the interventions as in validation."""
        if self.engine is None:
            yield
            return
        previous = self.engine.mode
        self._set(trainer, "val")
        try:
            yield
        finally:
            self._set(trainer, previous)

    def using_batch(self, batch: Mapping[str, Any]) -> Any:
        """A block whose forwards run ``batch`` (for batch-aware values), e.g. one probe set."""
        return self.engine.using_batch(batch) if self.engine is not None else nullcontext()

    def missing_fields(self, batch: Mapping[str, Any]) -> list[str]:
        """Batch fields the interventions need that ``batch`` lacks (a probe without them cannot run clamped)."""
        return [] if self.engine is None else [f for f in self.engine.needed_fields(live=True) if f not in batch]

    def _set(self, trainer: L.Trainer, mode: str) -> dict[str, float]:
        if self.engine is None:
            return {}
        self.engine.mode = mode
        return self.engine.update(trainer.global_step, self._last_metrics)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_metrics": dict(self._last_metrics)}
        if self.engine is not None:
            state["engine"] = self.engine.state_dict()
        if self._init_state is not None:
            state["init_state"] = self._init_state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.engine is None:
            self._pending = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.engine is not None
        self._last_metrics = dict(state.get("last_metrics", {}))
        self.engine.load_state_dict(state.get("engine", {}))
        if "init_state" in state:
            self._init_state = state["init_state"]
