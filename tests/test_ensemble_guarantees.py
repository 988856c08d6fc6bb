"""Sweeps, ensembles and the end of fit keep every guarantee `clamp fit` gives (issue 23): non-finite
intervention values refused at bind time, a diverged ensemble member stopped alone, invalid members
named without failing their siblings, any batchable DataModule, and SIGTERM during the end of fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from clamp.cli import main
from clamp.interventions import InterventionEngine
from clamp.interventions.ops import make_op
from clamp.sweep import load_sweep
from models import Transformer, TransformerConfig
from synthetic_data.base import TaskSpec
from tests.test_ensemble import _sweep


# ---------------------------------------------------------------------------------- non-finite intervention values
def test_a_constant_with_nonfinite_values_is_refused_naming_the_file_and_the_count(tmp_path: Path) -> None:
    values = np.zeros(16, dtype=np.float32)
    values[[2, 5, 7]] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(ValueError, match=r"`value`=.*bad\.npy.*3 of 16 values are not finite"):
        make_op({"kind": "constant", "value": str(tmp_path / "bad.npy")})
    with pytest.raises(ValueError, match=r"`value`=\[1\.0, nan\]: 1 of 2 values are not finite"):
        make_op({"kind": "constant", "value": [1.0, math.nan]})
    make_op({"kind": "constant", "value": [1.0, 2.0]})  # finite values pass


@pytest.mark.parametrize("op", [{"kind": "scale", "k": math.inf}, {"kind": "scale", "k": math.nan}, {"kind": "noise", "std": math.nan}, {"kind": "noise", "std": math.inf}])
def test_nonfinite_op_parameters_are_refused(op: dict) -> None:
    field = "k" if op["kind"] == "scale" else "std"
    with pytest.raises(ValueError, match=rf"op '{op['kind']}' field `{field}`=(inf|nan): must be a finite number"):
        make_op(op)


def test_until_on_a_nan_metric_is_an_error_naming_the_metric() -> None:
    """NaN crosses no threshold: without the check the clamp never releases and the run ends complete."""
    model = Transformer(TransformerConfig(n_layers=1, n_heads=2, d_model=16).resolved(d_vocab=8, n_ctx=6))
    engine = InterventionEngine(model, [{"site": "layer0.head0.z", "op": {"kind": "zero"}, "schedule": {"until": {"metric": "val/ic/loss", "threshold": 0.5, "mode": "below"}}}])
    engine.observe(6, {"val/ic/loss": 0.9})  # finite, not crossed: still on
    assert engine.released == {}
    with pytest.raises(ValueError, match=r"until\.metric='val/ic/loss' is nan.*can never be decided"):
        engine.observe(12, {"val/ic/loss": torch.tensor(float("nan"))})


# ---------------------------------------------------------------------------------- members fail alone
def _two_members(tmp_path: Path, other: dict) -> Path:
    """A sweep of two runs sharing one ensemble: an unclamped `none/seed0` and the condition `other`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = _sweep(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = [0]
    spec["grid"] = {"clamp": {"none": {}, **other}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _clamp(*interventions: dict) -> dict:
    return {"trainer.callbacks+": [{"class_path": "clamp.ClampCallback", "init_args": {"interventions": list(interventions)}}]}


def _blow_up(k: float) -> dict:  # from step 7: k=1e38 makes the residual stream inf, the loss nan (k=1: a harmless twin)
    return {"site": "layer0.resid_post", "op": {"kind": "scale", "k": k}, "schedule": {"start": 7}}


def _run(path: Path, save_dir: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        main(["sweep", str(path), "--save_dir", str(save_dir), "--ensemble", "2"])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_diverged_member_stops_alone_and_keeps_its_last_good_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The diverged member: exit 1, counted failed with `clamp fit`'s reason, its step-6 checkpoint kept
    (not overwritten by nan weights), summary.json incomplete, condition.json failed, not skipped on a
    re-run. Its sibling ends bitwise where it ends beside a healthy member."""
    control = _two_members(tmp_path / "control", {"calm": _clamp(_blow_up(1.0))})
    assert _run(control, tmp_path / "control_runs", capsys)[0] == 0
    path = _two_members(tmp_path, {"diverge": _clamp(_blow_up(1e38))})
    code, out = _run(path, tmp_path / "runs", capsys)
    bad = tmp_path / "runs" / "ens" / "diverge" / "seed0"
    assert code == 1 and "1 ran, 1 failed" in out
    assert f"failed {bad}: run {bad}: DivergenceError: training diverged: train/loss became nan/inf between steps 6 and 8" in out
    ckpt = torch.load(bad / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    summary = json.loads((bad / "summary.json").read_text())
    assert summary["complete"] is False and "training diverged" in summary["stopped"]
    record = json.loads((bad / "condition.json").read_text())
    assert record["finished"] is False and "training diverged" in record["failed"]
    assert [r.status() for r in load_sweep(path, str(tmp_path / "runs"))] == ["done", "resume"]
    a, b = (torch.load(root / "ens" / "none" / "seed0" / "checkpoints" / "last.ckpt", weights_only=False) for root in (tmp_path / "runs", tmp_path / "control_runs"))
    assert a["global_step"] == b["global_step"] == 12
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k
    assert json.loads((tmp_path / "runs" / "ens" / "none" / "seed0" / "summary.json").read_text())["complete"] is True


def test_an_invalid_member_is_named_with_its_own_error_and_its_sibling_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _two_members(tmp_path, {"typo": _clamp({"site": "layer0.head1.zz", "op": {"kind": "zero"}})})
    code, out = _run(path, tmp_path / "runs", capsys)
    good, bad = (tmp_path / "runs" / "ens" / c / "seed0" for c in ("none", "typo"))
    assert code == 1 and "1 ran, 1 failed" in out
    failed = [ln for ln in out.splitlines() if ln.strip().startswith("failed")]
    assert len(failed) == 1 and failed[0].strip().startswith(f"failed {bad}: run {bad}:") and "layer0.head1.zz" in failed[0], out
    assert str(good) not in failed[0]
    assert json.loads((good / "condition.json").read_text())["finished"] is True
    assert torch.load(good / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 12
    assert not (bad / "checkpoints").exists()


# ---------------------------------------------------------------------------------- any batchable DataModule
def test_text_datamodule_ensembles_equal_separate_runs(tmp_path: Path) -> None:
    """The member builder parses `data` as `clamp fit` does (any DataModule), so a TextDataModule sweep
    trains as an ensemble, each member as its separate run does (within the ensemble's float tolerance)."""
    from tests.test_text_data import corpus

    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus()))
    base = {
        "model": {"transformer": {"n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True}, "optimizer": {"lr": 0.003}},
        "data": {
            "class_path": "clamp.text.TextDataModule",
            "init_args": {"path": str(tmp_path / "corpus.txt"), "n_ctx": 16, "batch_size": 4, "vocab_size": 300, "eval_size": 8, "eval_batch_size": 8, "cache_dir": str(tmp_path / "cache")},
        },
        "trainer": {
            "max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None, "log_every_n_steps": 3, "accelerator": "cpu",
            "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}],
        },
    }  # fmt: skip
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    clamp = {"class_path": "clamp.ClampCallback", "init_args": {"interventions": [{"site": "layer0.head1.z", "op": {"kind": "zero"}}]}}
    sweep = {"experiment": "text", "base": "base.yaml", "seeds": [0, 1], "grid": {"clamp": {"none": {}, "zero": {"trainer.callbacks+": [clamp]}}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    main(["sweep", str(tmp_path / "sweep.yaml"), "--save_dir", str(tmp_path / "separate")])
    main(["sweep", str(tmp_path / "sweep.yaml"), "--save_dir", str(tmp_path / "ensemble"), "--ensemble", "4"])
    for cond in ("none", "zero"):
        for seed in (0, 1):
            a_dir, b_dir = (tmp_path / root / "text" / cond / f"seed{seed}" for root in ("separate", "ensemble"))
            a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False) for d in (a_dir, b_dir))
            assert b["global_step"] == 6 and json.loads((b_dir / "condition.json").read_text())["finished"]
            for k, v in a["state_dict"].items():
                torch.testing.assert_close(b["state_dict"][k], v, atol=2e-5, rtol=1e-4, msg=k)
            assert (b_dir / "tokenizer").exists()  # the data module's own set-up ran (it copies the tokenizer into the run)


def test_a_datamodule_the_loop_cannot_batch_is_refused_by_name_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = {
        "model": {"transformer": {"n_layers": 1, "n_heads": 2, "d_model": 16}},
        "data": {"class_path": "tests.test_ensemble_guarantees.PlainDataModule"},
        "trainer": {"max_steps": 4, "val_check_interval": 2, "check_val_every_n_epoch": None, "enable_progress_bar": False},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"experiment": "plain", "base": "base.yaml", "seeds": [0, 1]}))
    code, out = _run(tmp_path / "sweep.yaml", tmp_path / "runs", capsys)
    assert code == 1 and "usage:" not in out and "0 ran, 2 failed" in out, out
    failed = [ln for ln in out.splitlines() if ln.strip().startswith("failed")]
    want = "data module PlainDataModule lacks ['eval_split_names', 'eval_set', 'eval_batch_size'], which the ensemble loop batches by"
    assert len(failed) == 2 and all(want in ln and ln.endswith("run it without --ensemble") for ln in failed), out


class PlainDataModule(L.LightningDataModule):
    """A DataModule without the eval contract the ensemble loop batches by (stands in for any such class)."""

    spec = TaskSpec(d_vocab=8, n_ctx=6)

    def train_dataloader(self) -> list:
        return []


# ---------------------------------------------------------------------------------- a signal during the end of fit
SIGNAL_IN_PHASE_DETECTION = """
import os, signal, sys, time
from clamp.metrics.callback import EmergenceCallback
original = EmergenceCallback.on_fit_end
def on_fit_end(self, trainer, pl_module):  # SIGTERM arrives while the end-of-fit work (phase detection, summary) runs
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)
    original(self, trainer, pl_module)
EmergenceCallback.on_fit_end = on_fit_end
from clamp.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["fit", "ensemble"])
def test_sigterm_during_the_end_of_fit_still_writes_the_summary_and_stops_with_a_message(tmp_path: Path, how: str) -> None:
    """Lightning restores the default SIGTERM handler before on_fit_end (and the ensemble loop's handlers
    covered its steps only): a signal there killed the process without a message or summary.json."""
    import os
    import signal
    import subprocess
    import sys

    path = _two_members(tmp_path, {})
    runs = load_sweep(path, str(tmp_path / "runs"))
    runs[0].write_config()
    args = ["fit", "--config", str(runs[0].config_path)] if how == "fit" else ["sweep", str(path), "--save_dir", str(tmp_path / "runs"), "--ensemble", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_PHASE_DETECTION, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "stopped by SIGTERM" in proc.stderr
    if how == "fit":
        assert "clamp: stopped by SIGTERM during the end of fit; the run had finished: checkpoint and summary.json saved" in proc.stderr
    run = runs[0].dir
    assert json.loads((run / "summary.json").read_text())["complete"] is True  # the run had trained to its end
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert json.loads((run / "condition.json").read_text())["finished"] is True
