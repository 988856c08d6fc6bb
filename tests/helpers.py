"""Small builders shared by the integration tests (tiny models, few steps, fixed seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from clamp.training import OptimizerConfig, TrainingModule
from models import TransformerConfig
from synthetic_data import BurstyClassification, SyntheticDataModule


def bursty_datamodule(seed: int = 0, batch_size: int = 32) -> SyntheticDataModule:
    task = BurstyClassification(n_classes=64, dim=16, n_context=2, n_labels=8)
    return SyntheticDataModule(task, batch_size=batch_size, eval_size=64, eval_batch_size=64, seed=seed)


def tiny_module(dm: SyntheticDataModule, seed: int = 0, lr: float = 3e-3) -> TrainingModule:
    L.seed_everything(seed, verbose=False)
    return TrainingModule(TransformerConfig(n_layers=2, n_heads=2, d_model=16), OptimizerConfig(lr=lr, warmup_steps=5), dm.spec)


def trainer(root: Path, max_steps: int, callbacks: list[Callback] | None = None, **kw: Any) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        val_check_interval=kw.pop("val_check_interval", 10),
        check_val_every_n_epoch=None,
        logger=CSVLogger(root, name="log"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=callbacks or [],
        num_sanity_val_steps=0,
        **kw,
    )


def checkpoint_every_validation(root: Path) -> ModelCheckpoint:
    """Checkpoints written after each validation, so a resumed run has seen that validation too."""
    return ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{step}")


class RankFingerprint(Callback):
    """Writes each rank's parameter and clamp-state checksums, to compare ranks after a DDP run."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        params = sum(float(p.double().sum()) for p in pl_module.model.parameters())
        means = 0.0
        released: dict[str, int] = {}
        for cb in trainer.callbacks:
            engine = getattr(cb, "engine", None)
            if engine is not None:
                released.update(engine.released)
                for state in engine.state.values():
                    means += sum(float(t.double().sum()) for t in state.get("running_mean", {}).values())
        out = {"rank": trainer.global_rank, "world": trainer.world_size, "step": trainer.global_step, "params": params, "running_means": means, "released": released}
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


class LossTrace(Callback):
    """Records the training loss averaged over ranks at every step (rank 0 writes ``out_path``)."""

    def __init__(self, out_path: str) -> None:
        self.out_path, self.losses = out_path, []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(pl_module.all_gather(loss.detach()).float().mean()))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        if trainer.is_global_zero:
            Path(self.out_path).write_text(json.dumps(self.losses))


class SendSignal(Callback):
    """Sends ``signum`` to this process after optimizer step ``step`` (a preemption at a known point)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        import os

        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class KillAt(Callback):
    """SIGKILLs its own process at optimizer step ``step`` of a fresh fit (a hard crash: no cleanup runs).

    A resumed fit (started past step 0) is left alone, so the same config can be resumed.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._fresh = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fresh = trainer.global_step == 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._fresh and trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
