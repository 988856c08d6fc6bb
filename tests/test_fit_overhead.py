"""`clamp fit`'s per-step path carries no callback that has nothing left to do (issue 22, goal 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback

from clamp.cli import main

ROOT = Path(__file__).resolve().parents[1]


class CallbackCensus(Callback):
    """Appends to ``out`` (a line per step) the config savers in ``trainer.callbacks``: what Lightning dispatches every hook to."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        savers = [type(c).__name__ for c in trainer.callbacks if isinstance(c, SaveConfigCallback)]
        with self.out.open("a") as f:
            f.write(",".join(savers) + "\n")


def test_config_saver_writes_config_yaml_then_leaves_the_step_loop(tmp_path: Path) -> None:
    out = tmp_path / "census.txt"
    census = {"class_path": "tests.test_fit_overhead.CallbackCensus", "init_args": {"out": str(out)}}
    main([
        "fit", "--config", str(ROOT / "experiments" / "induction_default.yaml"), "--experiment", "census",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--data.batch_size", "8", "--data.eval_size", "16",
        "--model.transformer.d_model", "16", "--model.transformer.n_heads", "2", "--trainer.callbacks+", yaml.safe_dump(census),
    ])  # fmt: skip
    cfg = yaml.safe_load((tmp_path / "runs" / "census" / "version_0" / "config.yaml").read_text())
    assert cfg["experiment"] == "census" and cfg["trainer"]["max_steps"] == 3
    assert out.read_text().splitlines() == ["", "", ""]  # config.yaml was written at setup; no step dispatched to the saver
