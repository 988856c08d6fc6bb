"""EmergenceCallback end to end: what reaches TensorBoard and summary.json, and that the scores see circuits form."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp import ClampCallback, EmergenceCallback
from clamp.training import OptimizerConfig, TrainingModule
from models import TransformerConfig
from synthetic_data import BurstyClassification, SyntheticDataModule


def _fit(root: Path, steps: int, callbacks: list, *, d_model: int = 16, n_heads: int = 2, batch: int = 32, task: object = None) -> TensorBoardLogger:
    L.seed_everything(0, verbose=False)
    task = task or BurstyClassification(n_classes=256, dim=32, n_context=2, n_labels=32)
    dm = SyntheticDataModule(task, batch_size=batch, eval_size=128, seed=0)
    module = TrainingModule(TransformerConfig(n_layers=2, n_heads=n_heads, d_model=d_model), OptimizerConfig(lr=1e-3), dm.spec)
    logger = TensorBoardLogger(root, name="run", default_hp_metric=False)
    L.Trainer(
        max_steps=steps, val_check_interval=max(10, steps // 10), check_val_every_n_epoch=None, logger=logger, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    ).fit(module, datamodule=dm)
    return logger


def test_tensorboard_gets_head_scalars_layout_heatmaps_hparams_and_summary(tmp_path: Path) -> None:
    emerge = EmergenceCallback(every_n_steps=10, causal_every_n_steps=10, probe_size=32, heatmap_every_n_steps=20)
    clamp = ClampCallback([{"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"start": 0, "stop": 15}}])
    logger = _fit(tmp_path, 40, [emerge, clamp])
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("task/prev_token/L0H0", "task/query_to_match/L1H1", "task/ablate_zero/L0H0", "random/prev_token/L1H0", "curves/task/loss", "clamp/alpha/layer0.head1.z:zero", "val/ic/acc", "val/iw/acc"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("task/prev_token/L0H0")] == [0, 10, 20, 30, 40]
    # zero-ablating L0H1's output makes its causal importance exactly 0 while the clamp is on (steps 0 and 10)
    ablate = {e.step: e.value for e in acc.Scalars("task/ablate_zero/L0H1")}
    assert ablate[0] == 0.0 and ablate[10] == 0.0 and ablate[20] != 0.0
    alphas = {e.step: e.value for e in acc.Scalars("clamp/alpha/layer0.head1.z:zero")}
    assert alphas[14] == 1.0 and alphas[15] == 0.0
    assert "heatmap/task/induction" in acc.Tags()["images"]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    hp = HParamsPluginData.FromString(acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content)
    assert hp.session_start_info.hparams["clamp/summary"].string_value == "layer0.head1.z:zero@[0,15)"
    assert hp.session_start_info.hparams["transformer/d_model"].number_value == 16
    op = hp.session_start_info.hparams["clamp/0/op"].string_value  # readable, not JSON
    assert "kind=zero" in op and '"' not in op and "{" not in op, op
    summary = json.loads((Path(logger.log_dir) / "summary.json").read_text())
    assert set(summary) >= {"phase_changes", "final", "top_heads", "interventions"}
    assert summary["interventions"][0]["site"] == "layer0.head1.z"
    assert "val/ic/acc" in summary["phase_changes"]


def test_scores_see_the_induction_circuit_form(tmp_path: Path) -> None:
    """After the in-context phase change, a layer-0 head attends label->exemplar and a layer-1 head query->match."""
    emerge = EmergenceCallback(every_n_steps=50, probe_size=128, causal=False, heatmap_every_n_steps=0)
    _fit(tmp_path, 1000, [emerge], d_model=32, n_heads=4, batch=64)
    ic = emerge.history["val/ic/acc"]
    assert ic[0][1] < 0.6 and ic[-1][1] > 0.85, ic
    prev = emerge.last_heads["task/label_to_exemplar"]
    match = emerge.last_heads["task/query_to_match"]
    assert prev[0].max() > 0.7 and prev[0].max() > prev[1].max(), prev
    assert match[1].max() > 0.7 and match[1].max() > match[0].max(), match
    assert np.isfinite(emerge.last_heads["random/prev_token"]).all()
    pc = emerge.summarize()["phase_changes"]["val/ic/acc"]
    assert pc is not None and pc["jump"] > 0.3


def test_repeat_probe_measures_induction_on_token_tasks(tmp_path: Path) -> None:
    """On a next-token task with a long context the repeated-token probe gives induction and prefix-matching scores."""
    from synthetic_data import RepeatedTokens

    emerge = EmergenceCallback(every_n_steps=10, probe_size=16, causal=False, heatmap_every_n_steps=0)
    _fit(tmp_path, 20, [emerge], task=RepeatedTokens(vocab_size=16, seq_len=24, min_period=3, max_period=8))
    for name in ("repeat/induction", "repeat/prefix_matching", "repeat/prev_token", "task/induction", "repeat/teacher_forced_copy"):
        assert name in emerge.last_heads, name
    assert "curves/task/icl_score" in emerge.history


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        EmergenceCallback(every_n_steps=0)


def test_causal_importance_has_its_own_cadence_and_the_last_step(tmp_path: Path) -> None:
    """Two forwards per head make causal importance most of a probe's cost: by default every 5th probe, plus the last."""
    logger = _fit(tmp_path, 30, [EmergenceCallback(every_n_steps=5, probe_size=16, heatmap_every_n_steps=0)])
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("task/prev_token/L0H0")] == [0, 5, 10, 15, 20, 25, 30]
    assert [e.step for e in acc.Scalars("task/ablate_zero/L0H0")] == [0, 25, 30]
    with pytest.raises(ValueError, match="causal_every_n_steps=15 must be a positive multiple of every_n_steps=10"):
        EmergenceCallback(every_n_steps=10, causal_every_n_steps=15)
