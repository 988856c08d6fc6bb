"""Training end to end: loss decreases, seeds fix everything, and resuming equals an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from clamp import ClampCallback, EmergenceCallback
from clamp.training import OptimizerConfig, masked_loss_and_accuracy
from tests.helpers import bursty_datamodule, checkpoint_every_validation, tiny_module, trainer


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses[trainer.global_step] = float(outputs["loss"])


def test_short_run_loss_decreases(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    module = tiny_module(dm)
    batch = dm.eval_set("ic")
    with torch.no_grad():
        before, _ = masked_loss_and_accuracy(module(batch), batch)
    trainer(tmp_path, 80).fit(module, datamodule=dm)
    with torch.no_grad():
        after, _ = masked_loss_and_accuracy(module(batch), batch)
    assert float(after) < float(before) - 0.3


def test_same_seed_same_run(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        dm = bursty_datamodule(seed=5)
        rec = LossRecorder()
        trainer(tmp_path / str(i), 15, [rec]).fit(tiny_module(dm, seed=5), datamodule=dm)
        runs.append(rec.losses)
    assert runs[0] == runs[1]
    dm = bursty_datamodule(seed=6)
    rec = LossRecorder()
    trainer(tmp_path / "other", 15, [rec]).fit(tiny_module(dm, seed=6), datamodule=dm)
    assert rec.losses != runs[0]


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = OptimizerConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_factor(0, 110) == pytest.approx(0.1)
    assert cfg.lr_factor(9, 110) == pytest.approx(1.0)
    assert cfg.lr_factor(60, 110) == pytest.approx(0.55)
    assert cfg.lr_factor(110, 110) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule='linear'"):
        OptimizerConfig(schedule="linear").validate()  # type: ignore[arg-type]


def _clamps() -> ClampCallback:
    return ClampCallback(
        [
            {"site": "layer0.head0.z", "op": {"kind": "noise", "std": 0.5}, "schedule": {"start": 5, "stop": 35, "ramp": 4}},
            {"site": "layer1.head1.z", "op": {"kind": "mean", "over": "running", "momentum": 0.2}},
            {"site": "layer0.head1.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"},
             "schedule": {"until": {"metric": "val/ic/acc", "threshold": 0.0, "mode": "above"}}},
            {"site": "layer1.resid_post", "op": {"kind": "resample"}, "schedule": {"period": 6, "on": 2}, "positions": [-1]},
        ],
        seed=3,
    )


def test_resume_mid_run_equals_uninterrupted(tmp_path: Path) -> None:
    total, cut = 40, 20
    dm = bursty_datamodule(seed=1)
    full = LossRecorder()
    emerge_full = EmergenceCallback(every_n_steps=10, probe_size=16, causal=False, heatmap_every_n_steps=0)
    clamps_full = _clamps()
    trainer(tmp_path / "full", total, [full, clamps_full, emerge_full, checkpoint_every_validation(tmp_path / "full")]).fit(tiny_module(dm, seed=1), datamodule=dm)
    ckpt = tmp_path / "full" / "ckpt" / f"step={cut}.ckpt"
    assert ckpt.exists()
    # the `until` clamp is released at the first validation (step 10) and that is checkpointed
    assert clamps_full.engine is not None and clamps_full.engine.released

    dm2 = bursty_datamodule(seed=1)
    resumed = LossRecorder()
    emerge_res = EmergenceCallback(every_n_steps=10, probe_size=16, causal=False, heatmap_every_n_steps=0)
    clamps_res = _clamps()
    trainer(tmp_path / "res", total, [resumed, clamps_res, emerge_res]).fit(tiny_module(dm2, seed=99), datamodule=dm2, ckpt_path=ckpt)

    assert sorted(resumed.losses) == list(range(cut + 1, total + 1))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step
    assert clamps_res.engine.released == clamps_full.engine.released
    for key in ("val/ic/acc", "task/induction/L1H0", "curves/task/loss"):
        full_steps, full_vals = zip(*emerge_full.history[key])
        res_steps, res_vals = zip(*emerge_res.history[key])
        assert res_steps == full_steps, key
        assert res_vals == pytest.approx(full_vals, abs=1e-6), key


def test_resume_without_init_state_is_refused(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    trainer(tmp_path / "a", 10, [checkpoint_every_validation(tmp_path / "a")]).fit(tiny_module(dm), datamodule=dm)
    ckpt = tmp_path / "a" / "ckpt" / "step=10.ckpt"
    clamp = ClampCallback([{"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": "init"}}])
    with pytest.raises(RuntimeError, match="initial weights"):
        trainer(tmp_path / "b", 20, [clamp]).fit(tiny_module(dm), datamodule=dm, ckpt_path=ckpt)


def test_unknown_site_fails_before_training(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    rec = LossRecorder()
    clamp = ClampCallback([{"site": "layer0.head1.zz", "op": {"kind": "zero"}}])
    with pytest.raises(KeyError, match=r"layer0\.resid_pre"):
        trainer(tmp_path, 10, [clamp, rec]).fit(tiny_module(dm), datamodule=dm)
    assert rec.losses == {}


def test_zero_ablation_really_reaches_training(tmp_path: Path) -> None:
    """Zero-ablating every head of layer 0 throughout: its weights get no gradient and stay at init."""
    dm = bursty_datamodule()
    module = tiny_module(dm)
    w0 = module.model.blocks[0].attn.qkv.weight.detach().clone()
    w1 = module.model.blocks[1].attn.qkv.weight.detach().clone()
    clamp = ClampCallback([{"site": "layer0.head*.z", "op": {"kind": "zero"}}])
    trainer(tmp_path, 10, [clamp]).fit(module, datamodule=dm)
    assert torch.equal(module.model.blocks[0].attn.qkv.weight, w0)
    assert not torch.equal(module.model.blocks[1].attn.qkv.weight, w1)
    assert not any(s.active for s in module.model.site_map().values())  # hooks removed at teardown
