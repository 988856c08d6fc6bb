"""Hardening (issue 7): hostile files, edited resumes, until on any metric, divergence, early
validation, schedule conflicts, readable errors, crash-safe summaries and small config checks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from clamp import ClampCallback, EmergenceCallback, intervene
from clamp.interventions.engine import InterventionEngine
from clamp.interventions.schedules import Schedule, Window
from clamp.run_files import json_safe, write_json_atomic, write_summary
from clamp.training import DivergenceError, OptimizerConfig
from models import Transformer, TransformerConfig
from tests.helpers import bursty_datamodule, checkpoint_every_validation, tiny_module, trainer


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=16, n_ctx=8))


def _engine_error(model: Transformer, *interventions: dict) -> str:
    with pytest.raises((ValueError, KeyError, TypeError, FileNotFoundError)) as e:
        engine = InterventionEngine(model, list(interventions))
        engine.load_references()
    return str(e.value)


# ============================================================ 2. hostile and corrupt reference files


class _Payload:
    """Unpickling this runs ``open(path, 'w')``: the file exists afterwards iff code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def test_hostile_reference_checkpoint_runs_no_code(model: Transformer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {}, "payload": _Payload(marker)}, ckpt)
    assert not marker.exists()
    msg = _engine_error(model, {"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(ckpt)}, "name": "ref"})
    assert not marker.exists(), "loading the reference executed pickled code"
    assert str(ckpt) in msg and "'ref'" in msg and "weights_only" in msg
    # a constant's .pt value is loaded the same safe way
    evil_pt = tmp_path / "value.pt"
    torch.save(_Payload(marker), evil_pt)
    msg = _engine_error(model, {"site": "layer0.resid_post", "op": {"kind": "constant", "value": str(evil_pt)}})
    assert not marker.exists() and "value" in msg


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, b"PK\x03\x04 truncated zip"])
def test_corrupt_reference_names_path_and_intervention(model: Transformer, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(content)
    msg = _engine_error(model, {"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(bad)}, "name": "my_clamp"})
    assert str(bad) in msg and "my_clamp" in msg and "\n" not in msg


def test_reference_without_architecture_warns_and_with_metadata_is_checked(model: Transformer, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = Transformer(TransformerConfig(n_layers=2, n_heads=4, d_model=16).resolved(d_vocab=16, n_ctx=8))  # same shapes
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(bare))
    with pytest.warns(UserWarning, match="no architecture config"):
        with intervene(model, [{"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(bare)}}]):
            pass
    meta = {"hyper_parameters": json.dumps({"transformer": {"n_layers": 2, "n_heads": 4, "d_model": 16}, "task": {"d_vocab": 16, "n_ctx": 8}})}
    tagged = tmp_path / "tagged.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tagged), metadata=meta)
    msg = _engine_error(model, {"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(tagged)}})
    assert "n_heads=4 in the reference vs 2 in the model" in msg


# ============================================================ 6. typed op parameters, checked at setup


@pytest.mark.parametrize(
    ("op", "expect"),
    [
        ({"kind": "scale"}, "op 'scale' needs `k`"),
        ({"kind": "constant"}, "op 'constant' needs `value`"),
        ({"kind": "scale", "k": "half"}, "field `k`='half': expected a number"),
        ({"kind": "noise", "std": [1]}, "field `std`=[1]: expected a number"),
        ({"kind": "mean", "over": "time"}, "field `over`='time': expected 'batch' | 'batch_pos' | 'running'"),
        ({"kind": "construct", "fn": 3}, "field `fn`=3: expected a string"),
        ({"kind": "constant", "value": [[1.0, 2.0], [3.0]]}, "op 'constant' field `value`"),
    ],
)
def test_op_parameters_are_typed_and_required(model: Transformer, op: dict, expect: str) -> None:
    msg = _engine_error(model, {"site": "layer0.resid_post", "op": op, "name": "x"})
    assert msg.startswith("intervention 0 (x): ") and expect in msg


def test_indices_are_checked_at_setup_naming_field_and_intervention(model: Transformer) -> None:
    msg = _engine_error(model, {"site": "layer0.head0.pattern", "op": {"kind": "zero"}, "positions": [], "name": "p"})
    assert "intervention 0 (p)" in msg and "`positions` is empty" in msg
    msg = _engine_error(model, {"site": "layer0.head0.pattern", "op": {"kind": "zero"}, "features": [9], "name": "f"})
    assert "intervention 0 (f)" in msg and "`features` [9]" in msg and "k_pos" in msg and "-8..7" in msg


def test_schedule_that_starts_after_max_steps_is_refused(model: Transformer) -> None:
    cb = ClampCallback([{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"start": 500}, "name": "late"}])
    with pytest.raises(ValueError, match=r"intervention 0 \(late\)\.schedule: starts at step 500 but trainer.max_steps is 100"):
        cb.check(SimpleNamespace(max_steps=100), SimpleNamespace(model=model))
    ok = ClampCallback([{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"start": 50}}])
    ok.check(SimpleNamespace(max_steps=100), SimpleNamespace(model=model))


# ============================================================ 7 + 10. schedule conflicts and error prefixes


def test_alternating_windows_and_complementary_gates_are_not_conflicts(model: Transformer) -> None:
    a = {"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"windows": [{"start": 0, "stop": 10}, {"start": 20, "stop": 30}]}, "name": "a"}
    b = {"site": "layer0.z", "op": {"kind": "mean"}, "schedule": {"windows": [{"start": 10, "stop": 20}, {"start": 30, "stop": 40}]}, "name": "b"}
    InterventionEngine(model, [a, b])
    on = {"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"period": 10, "on": 5}, "name": "on"}
    off = {"site": "layer0.z", "op": {"kind": "mean"}, "schedule": {"start": 5, "period": 10, "on": 5}, "name": "off"}
    InterventionEngine(model, [on, off])
    clash = {"site": "layer0.z", "op": {"kind": "mean"}, "schedule": {"start": 4, "period": 10, "on": 5}, "name": "clash"}
    with pytest.raises(ValueError, match="conflicting interventions: 'on'"):
        InterventionEngine(model, [on, clash])
    with pytest.raises(ValueError, match="conflicting"):
        InterventionEngine(model, [a, {**b, "schedule": {"windows": [{"start": 9, "stop": 12}]}}])


def test_overlap_matches_the_alphas() -> None:
    """``Schedule.overlaps`` agrees with a brute-force scan of both alpha curves."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        def rand() -> Schedule:
            starts = sorted(rng.integers(0, 40, 2))
            s = Schedule(windows=[Window(int(starts[0]), int(starts[0] + rng.integers(1, 15))), Window(int(starts[1]), int(starts[1] + rng.integers(1, 15)))])
            if rng.random() < 0.6:
                s.period = int(rng.integers(2, 9))
                s.on = int(rng.integers(1, s.period + 1))
            return s

        a, b = rand(), rand()
        brute = any(a.alpha(t) > 0 and b.alpha(t) > 0 for t in range(0, 120))
        assert a.overlaps(b) == brute == b.overlaps(a)


def test_schedule_errors_have_one_prefix(model: Transformer) -> None:
    msg = _engine_error(model, {"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"start": 10, "stop": 5}, "name": "s"})
    assert msg.count("intervention 0") == 1 and msg.startswith("intervention 0 (s): schedule: stop=5")


def test_optimizer_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^model\.optimizer\.lr=0: must be a finite number > 0$"):
        OptimizerConfig(lr=0).validate()
    with pytest.raises(ValueError, match=r"model\.optimizer\.beta2=1\.5"):
        OptimizerConfig(beta2=1.5).validate()


# ============================================================ 5 + 9. crash-safe, valid summary.json


def test_summary_json_is_valid_and_atomic(tmp_path: Path) -> None:
    path = write_summary(tmp_path, {"final": {"train/loss": float("nan"), "x": float("inf"), "ok": np.float32(0.5)}}, complete=False, stopped="why")
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse in other tools
    assert data == {"complete": False, "stopped": "why", "final": {"train/loss": None, "x": None, "ok": 0.5}}
    assert json_safe({"a": (1, torch.tensor(2.0))}) == {"a": [1, 2.0]}

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": Unserialisable()})
    assert json.loads(path.read_text())["stopped"] == "why"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_divergence_stops_with_a_clear_error_and_valid_summary(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    module = tiny_module(dm, lr=1e4)
    emerge = EmergenceCallback(every_n_steps=5, probe_size=8, causal=False, heatmap_every_n_steps=0)
    # lr 1e4 reaches a non-finite loss on some CPUs' rounding and stays finite on others: poison the
    # weights at step 10 as well, so the divergence is the same on every machine
    from tests.test_vendor_safety import _PoisonWeights

    t = trainer(tmp_path, 60, [_PoisonWeights(), emerge], val_check_interval=30)
    with pytest.raises(DivergenceError, match=r"training diverged: train/loss became nan/inf between steps \d+ and \d+ .*lr=10000"):
        t.fit(module, datamodule=dm)
    assert t.global_step < 60
    summary = json.loads((Path(t.log_dir) / "summary.json").read_text())
    assert summary["complete"] is False and summary["stopped"].startswith("DivergenceError: training diverged")


# ============================================================ 3. clamp state keyed per intervention


def _clamps(momentum: float = 0.2, threshold: float = 0.0) -> list[dict]:
    return [
        {"site": "layer1.head1.z", "op": {"kind": "mean", "over": "running", "momentum": momentum}, "name": "mean"},
        {"site": "layer0.head1.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}, "name": "init_ref",
         "schedule": {"until": {"metric": "val/ic/acc", "threshold": threshold}}},
        {"site": "layer0.head0.z", "op": {"kind": "zero"}, "schedule": {"start": 0, "stop": 5}, "name": "gone"},
    ]


def test_editing_one_intervention_keeps_the_others_state_and_says_what_changed(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    first = ClampCallback(_clamps())
    trainer(tmp_path / "a", 10, [first, checkpoint_every_validation(tmp_path / "a")]).fit(tiny_module(dm), datamodule=dm)
    assert first.engine is not None and first.engine.released == {"init_ref": 10}
    mean_before = first.engine.state["mean"]["running_mean"]["layer1.z.head1"].clone()
    # edit: momentum of `mean` changes, `init_ref` is untouched, `gone` is removed, `new` is added
    edited = _clamps(momentum=0.5)[:2] + [{"site": "layer1.head0.z", "op": {"kind": "zero"}, "name": "new"}]
    second = ClampCallback(edited)
    seen: dict = {}

    class Peek(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["released"] = dict(second.engine.released)
            seen["mean"] = second.engine.state["mean"]["running_mean"]["layer1.z.head1"].clone()

    with pytest.warns(UserWarning) as record:
        trainer(tmp_path / "b", 12, [second, Peek()]).fit(tiny_module(dm), datamodule=dm, ckpt_path=tmp_path / "a" / "ckpt" / "step=10.ckpt")
    note = next(str(w.message) for w in record if "resuming with edited interventions" in str(w.message))
    assert "'mean' changed (op.momentum: 0.2 -> 0.5): running mean kept" in note
    assert "'new' is new: starts fresh" in note and "'gone' was removed" in note and "init_ref" not in note
    assert seen["released"] == {"init_ref": 10}  # the released clamp stays released (and `reference: init` loads)
    assert torch.equal(seen["mean"], mean_before)
    # changing what a release depends on re-arms it, and says so
    third = ClampCallback(_clamps(threshold=2.0))
    with pytest.warns(UserWarning, match=r"'init_ref' changed \(schedule.until.threshold: 0.0 -> 2.0\): release at step 10 dropped"):
        trainer(tmp_path / "c", 11, [third]).fit(tiny_module(dm), datamodule=dm, ckpt_path=tmp_path / "a" / "ckpt" / "step=10.ckpt")
    assert third.engine.released == {}


# ============================================================ 4. until on any logged metric


def test_until_releases_on_an_emergence_metric_and_a_typo_fails_at_first_validation(tmp_path: Path) -> None:
    dm = bursty_datamodule()
    emerge = EmergenceCallback(every_n_steps=5, probe_size=8, causal=False, heatmap_every_n_steps=0)
    clamp = ClampCallback([{"site": "layer0.head0.z", "op": {"kind": "zero"}, "name": "z",
                            "schedule": {"until": {"metric": "curves/task/loss", "threshold": 100.0, "mode": "below"}}}])
    trainer(tmp_path / "ok", 12, [clamp, emerge], val_check_interval=10).fit(tiny_module(dm), datamodule=dm)
    assert clamp.engine is not None and clamp.engine.released == {"z": 10}
    typo = ClampCallback([{"site": "layer0.head0.z", "op": {"kind": "zero"}, "name": "z",
                           "schedule": {"until": {"metric": "curves/task/los", "threshold": 1.0}}}])
    emerge2 = EmergenceCallback(every_n_steps=5, probe_size=8, causal=False, heatmap_every_n_steps=0)
    with pytest.raises(ValueError, match=r"intervention 0 \(z\)\.schedule\.until\.metric='curves/task/los' was not logged .* did you mean \['curves/task/loss'"):
        trainer(tmp_path / "typo", 12, [typo, emerge2], val_check_interval=10).fit(tiny_module(dm), datamodule=dm)


# ============================================================ 10. accumulate_grad_batches


def test_accumulated_steps_probe_once(tmp_path: Path) -> None:
    dm = bursty_datamodule(batch_size=8)
    emerge = EmergenceCallback(every_n_steps=2, probe_size=8, causal=False, heatmap_every_n_steps=0)
    probes: list[int] = []
    original = emerge._probe

    def counting(trainer, pl_module) -> None:  # noqa: ANN001
        probes.append(trainer.global_step)
        original(trainer, pl_module)

    emerge._probe = counting  # type: ignore[method-assign]
    trainer(tmp_path, 6, [emerge], accumulate_grad_batches=3, val_check_interval=18).fit(tiny_module(dm), datamodule=dm)
    assert probes == [0, 2, 4, 6]
    steps = [s for s, _ in emerge.history["train/loss"]]
    assert steps == sorted(set(steps))  # one loss point per optimizer step


def test_zero_heads_is_a_named_config_error_not_a_division_by_zero() -> None:
    with pytest.raises(ValueError, match="n_heads must be > 0, got 0"):
        TransformerConfig(n_heads=0).resolved(d_vocab=4, n_ctx=4)


def test_callback_metrics_hold_model_level_scalars_and_the_per_head_ones_a_callback_reads(tmp_path: Path) -> None:
    """Lightning deep-copies callback_metrics at every checkpoint, so per-head probe scalars go there
    only when an `until` schedule or a `monitor` reads them; the model-level ones always do."""
    from lightning.pytorch.callbacks import EarlyStopping

    dm = bursty_datamodule()
    emerge = EmergenceCallback(every_n_steps=5, probe_size=8, causal=False, heatmap_every_n_steps=0)
    clamp = ClampCallback([{"site": "layer0.head0.z", "op": {"kind": "zero"}, "name": "z",
                            "schedule": {"until": {"metric": "task/prev_token/L0H1", "threshold": 2.0, "mode": "below"}}}])
    stop = EarlyStopping(monitor="task/induction/L1H0", mode="max", patience=100, check_on_train_epoch_end=False)
    run = trainer(tmp_path, 10, [clamp, emerge, stop], val_check_interval=5)
    run.fit(tiny_module(dm), datamodule=dm)
    metrics = run.callback_metrics
    assert {"task/prev_token/L0H1", "task/induction/L1H0", "curves/task/loss", "task/induction/max", "task/prev_token/median"} <= set(metrics)
    assert "task/prev_token/L0H0" not in metrics and "task/induction/L1H1" not in metrics
    assert clamp.engine is not None and clamp.engine.released == {"z": 5}
    assert len(emerge.history["task/prev_token/L0H0"]) == 3  # every scalar is still measured and kept


def test_emergence_state_round_trips_and_reads_the_unpacked_format() -> None:
    """The packed checkpoint state (a few tensors) loads to the same history, and a checkpoint written
    before the packing (lists of (step, value)) still loads."""
    emerge = EmergenceCallback()
    emerge.history = {"train/loss": [(0, 3.5), (1, 3.25)], "task/induction/L1H0": [(0, 0.1)], "empty": []}
    emerge.last_heads = {"task/induction": np.array([[0.1, np.nan], [0.3, 0.4]]), "task/prev_token": np.zeros((2, 2))}
    emerge.sequences_per_step = 32
    state = emerge.state_dict()
    assert all(isinstance(v, torch.Tensor) for k, v in state["history"].items() if k != "names")
    loaded = EmergenceCallback()
    loaded.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert loaded.history == emerge.history and loaded.sequences_per_step == 32
    assert all(np.array_equal(loaded.last_heads[k], v, equal_nan=True) for k, v in emerge.last_heads.items())
    old = EmergenceCallback()
    old.load_state_dict({"history": {k: [list(p) for p in h] for k, h in emerge.history.items()},
                         "last_heads": {k: torch.from_numpy(v) for k, v in emerge.last_heads.items()}, "sequences_per_step": 32})
    assert old.history == emerge.history and set(old.last_heads) == set(emerge.last_heads)
