"""A guard for a divergence that stays finite: a loss that runs away far above where it started.

The non-finite check (:class:`clamp.training.DivergenceError`) catches NaN and inf. An lr of 10 on the
default task instead ends at a train loss of ~700 (chance: 2.08) with every value finite, and the run
would finish "complete" with phase changes fitted to the blow-up. :class:`RunawayLossGuard` stops such
a run the same way: the same error type, so the same one-line message, checkpoint and summary.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from clamp.training import DivergenceError


class RunawayLossError(DivergenceError):
    """The training loss stayed far above its initial value: the run diverged without a NaN."""


class RunawayLossGuard(Callback):
    """Stop when ``train/loss`` exceeds ``max_ratio`` x its first value at ``patience`` consecutive logging steps.

    Args:
        max_ratio: how far above the first step's loss counts as runaway (default 10: a healthy run's
            loss falls from its initial value, and an intervention that raises it a little does not reach 10x).
        patience: consecutive logging steps above the bound before stopping (one noisy batch decides nothing).
        enabled: ``False`` turns the guard off (e.g. to study a blow-up on purpose).
    """

    def __init__(self, max_ratio: float = 10.0, patience: int = 3, enabled: bool = True) -> None:
        if not (math.isfinite(max_ratio) and max_ratio > 1):
            raise ValueError(f"RunawayLossGuard.max_ratio={max_ratio!r}: must be a finite number > 1")
        if patience < 1:
            raise ValueError(f"RunawayLossGuard.patience={patience!r}: must be >= 1")
        self.max_ratio, self.patience, self.enabled = float(max_ratio), int(patience), bool(enabled)
        self.initial: float | None = None
        self.above = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.enabled:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.global_step
        if self.initial is not None and step % max(1, trainer.log_every_n_steps) != 0:
            return  # read the loss (a host sync) only at logging steps
        value = float(loss.detach())
        if not math.isfinite(value):
            return  # the non-finite check reports it
        if self.initial is None:
            self.initial = value
            return
        self.above = self.above + 1 if value > self.max_ratio * self.initial else 0
        if self.above >= self.patience:
            lr = getattr(getattr(pl_module, "optimizer_config", None), "lr", float("nan"))
            raise RunawayLossError(
                f"training diverged: train/loss {value:.4g} at step {step} has stayed above {self.max_ratio:g}x its initial "
                f"{self.initial:.4g} for {self.patience} logging steps (model.optimizer.lr={lr:g}); lower model.optimizer.lr, "
                "raise model.optimizer.warmup_steps or set trainer.gradient_clip_val (the guard: clamp.guards.RunawayLossGuard)"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "above": self.above}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial, self.above = state_dict.get("initial"), int(state_dict.get("above", 0))
