"""Ensembles: one batched model equals its members, and `clamp sweep --ensemble` equals separate runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clamp.cli import main
from clamp.ensemble import trainer as ensemble_trainer
from clamp.ensemble.runner import _build_member, plan_ensembles, resume_step, train_ensemble
from clamp.ensemble.trainer import EnsembleError, EnsembleTrainer, LoopSettings, Member
from clamp.interventions.callback import ClampCallback
from clamp.metrics.callback import EmergenceCallback
from clamp.sweep import load_sweep
from clamp.training import masked_loss_and_accuracy
from models import Transformer, TransformerConfig
from models.ensemble import EnsembleTransformer
from synthetic_data.base import model_inputs
from tests.helpers import bursty_datamodule, tiny_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "options",
    [
        dict(attn_only=True, positional="learned"),
        dict(attn_only=False, positional="rotary", normalization="none", tie_embeddings=True, bias=False),
        dict(attn_only=False, positional="none", act_fn="relu", attn_bias=False, init="lecun"),
    ],
)
def test_ensemble_forward_equals_each_member(options: dict) -> None:
    cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=32, **options).resolved(d_vocab=16, n_ctx=12, d_feature=0 if options.get("tie_embeddings") else 8)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(Transformer(cfg))
    ens = EnsembleTransformer(cfg, 3)
    ens.load_members([m.state_dict() for m in members])
    tokens = torch.randint(0, 16, (3, 5, 12))
    feats = torch.randn(3, 5, 12, 8) if cfg.d_feature else None
    fmask = torch.rand(3, 5, 12) > 0.5 if cfg.d_feature else None
    want = torch.stack([m(tokens[i], None if feats is None else feats[i], None if fmask is None else fmask[i]) for i, m in enumerate(members)])
    torch.testing.assert_close(ens(tokens, feats, fmask), want, atol=1e-6, rtol=0)
    _, cache = ens.run_with_cache(tokens, feats, fmask, names=["layer1.pattern", "layer0.result"])  # explicit attention path
    _, ref = members[2].run_with_cache(tokens[2], None if feats is None else feats[2], None if fmask is None else fmask[2], names=["layer1.pattern"])
    torch.testing.assert_close(cache["layer1.pattern"][2], ref["layer1.pattern"], atol=1e-6, rtol=0)
    assert cache["layer0.result"].shape == (3, 5, 4, 12, 32)


CLAMPS = [
    {"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"start": 3}},
    {"site": "layer1.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}, "positions": [-1], "schedule": {"ramp": 4}},
    {"site": "layer1.head0.z", "op": {"kind": "mean", "over": "running"}},
    {"site": "layer0.resid_post", "op": {"kind": "noise", "std": 0.05}},
    {"site": "layer0.attn_out", "op": {"kind": "patch", "transform": "resample_batch"}, "features": [0, 1, 2], "during": ["train"]},
    # batch-aware (reads match_pos): validation must hand each eval chunk to the member's clamps
    {"site": "layer0.head0.pattern", "positions": [-1], "op": {"kind": "construct", "fn": "clamp.interventions.constructors.induction_pattern"}},
    # a differentiable second pass runs on the member's own view: its gradient must reach the stack
    {"site": "layer1.head1.z", "grad": True, "op": {"kind": "patch", "transform": "identity",
                                                     "interventions": [{"site": "layer0.resid_post", "op": {"kind": "scale", "k": 0.5}}]}},
]


def _sweep(tmp_path: Path, **extra) -> Path:
    spec = {
        "experiment": "ens",
        "base": str(ROOT / "experiments" / "induction_default.yaml"),
        "seeds": [0, 1],
        "overrides": {
            "trainer.max_steps": 12,
            "trainer.val_check_interval": 6,
            "trainer.log_every_n_steps": 4,
            "trainer.enable_progress_bar": False,
            "trainer.callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "clamp.EmergenceCallback", "init_args": {"every_n_steps": 6, "probe_size": 16, "heatmap_every_n_steps": 0}},
            ],
            "data.batch_size": 16,
            "data.eval_size": 48,
            "data.eval_batch_size": 32,
            "model.transformer": {"d_model": 16, "n_heads": 2},
            **extra,
        },
        "grid": {
            "clamp": {
                "none": {},
                "clamped": {"trainer.callbacks+": [{"class_path": "clamp.ClampCallback", "init_args": {"interventions": CLAMPS}}]},
            }
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _history(ckpt: dict) -> dict[str, list[tuple[int, float]]]:
    """EmergenceCallback's curves as saved in a checkpoint (decoded by the callback itself)."""
    return EmergenceCallback.unpack_history(ckpt["callbacks"]["EmergenceCallback"])


def test_ensemble_sweep_equals_separate_runs(tmp_path: Path) -> None:
    path = _sweep(tmp_path)
    main(["sweep", str(path), "--save_dir", str(tmp_path / "separate")])
    main(["sweep", str(path), "--save_dir", str(tmp_path / "ensemble"), "--ensemble", "4"])
    for cond in ("none", "clamped"):
        for seed in (0, 1):
            a_dir, b_dir = (tmp_path / root / "ens" / cond / f"seed{seed}" for root in ("separate", "ensemble"))
            a = torch.load(a_dir / "checkpoints" / "last.ckpt", weights_only=False)
            b = torch.load(b_dir / "checkpoints" / "last.ckpt", weights_only=False)
            ha, hb = (EmergenceCallback.unpack_history(c["callbacks"]["EmergenceCallback"]) for c in (a, b))
            assert sorted(ha) == sorted(hb)
            for tag in ("train/loss", "val/ic/loss", "val/iw/acc", "curves/task/loss", "task/induction/L1H0"):
                steps_a, values_a = zip(*ha[tag])
                steps_b, values_b = zip(*hb[tag])
                assert steps_a == steps_b, tag
                torch.testing.assert_close(torch.tensor(values_b), torch.tensor(values_a), atol=2e-5, rtol=1e-5, msg=tag)
            for k, v in a["state_dict"].items():
                torch.testing.assert_close(b["state_dict"][k], v, atol=2e-5, rtol=1e-4)
            assert a["hyper_parameters"] == b["hyper_parameters"]
            rec = json.loads((b_dir / "condition.json").read_text())
            assert rec["finished"] and rec["condition"] == cond and rec["seed"] == seed
            assert (b_dir / "summary.json").exists() and (b_dir / "config.yaml").exists() and list(b_dir.glob("events.out.tfevents.*"))
    # the clamp was on in the member that asked for it, and only there: its curves differ from the unclamped seed's
    none = torch.load(tmp_path / "ensemble" / "ens" / "none" / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
    clamped = torch.load(tmp_path / "ensemble" / "ens" / "clamped" / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert EmergenceCallback.unpack_history(none["callbacks"]["EmergenceCallback"])["train/loss"] != EmergenceCallback.unpack_history(clamped["callbacks"]["EmergenceCallback"])["train/loss"]


@pytest.mark.parametrize("workers", [0, 2])
def test_members_read_the_batches_of_separate_runs(workers: int) -> None:
    """With or without data workers (one lockstep loader for all members), step k gives every member
    its own run's batch k, resumed mid-stream too: the batches a separate run's DataLoader yields."""
    from types import SimpleNamespace

    from clamp.ensemble.trainer import _steps

    def loaders(num_workers: int) -> list:
        out = []
        for seed in range(3):
            dm = bursty_datamodule(seed, batch_size=4)
            dm.num_workers = num_workers
            dm.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=1)  # resumed at step 3
            out.append(dm.train_dataloader())
        return out

    steps = _steps(loaders(workers))
    separate = [iter(lo) for lo in loaders(0)]  # each run's own DataLoader
    for _ in range(5):
        step = next(steps)
        assert len(step) == 3
        for member, it in zip(step, separate):
            expected = next(it)
            assert member.keys() == expected.keys()
            for k, v in expected.items():
                assert isinstance(member[k], torch.Tensor) and torch.equal(member[k], v), k
    assert not torch.equal(step[0]["features"], step[1]["features"])  # members' seeds differ


def test_runs_group_by_everything_but_seed_and_clamps(tmp_path: Path) -> None:
    runs = load_sweep(_sweep(tmp_path), str(tmp_path / "runs"))
    assert [len(g) for g in plan_ensembles(runs, 3)] == [3, 1]
    spec = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    spec["grid"]["lr"] = {"a": {}, "b": {"model.optimizer.lr": 0.01}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    groups = plan_ensembles(load_sweep(tmp_path / "sweep.yaml", str(tmp_path / "runs")), 8)
    assert sorted(len(g) for g in groups) == [4, 4]  # different learning rates never share an ensemble


def test_unsupported_settings_are_rejected_by_name(tmp_path: Path) -> None:
    path = _sweep(tmp_path, **{"trainer.callbacks+": [{"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/ic/loss"}}]})
    runs = load_sweep(path, str(tmp_path / "runs"))
    for run in runs:
        run.write_config()
    with pytest.raises(EnsembleError, match=r"callbacks \['EarlyStopping'\] cannot run in an ensemble; supported: .*ClampCallback"):
        train_ensemble(runs[:2])
    path = _sweep(tmp_path, **{"trainer.accumulate_grad_batches": 2})
    runs = load_sweep(path, str(tmp_path / "runs"))
    for run in runs:
        run.write_config()
    with pytest.raises(EnsembleError, match="accumulate_grad_batches=2"):
        train_ensemble(runs[:2])


@pytest.mark.parametrize("clamped", [False, True])
@pytest.mark.parametrize("cache", [1, None])
def test_validation_slices_a_batch_across_members_unless_a_clamp_acts(tmp_path: Path, clamped: bool, cache: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without live clamps, a validation forward too big for the cache holds about one run's eval batch
    (eval_batch_size // members rows per member); a clamp that reads the batch sees Lightning's whole
    batch. Metrics equal each member's own evaluation either way."""
    if cache is not None:
        monkeypatch.setattr(ensemble_trainer, "EVAL_CACHE_BYTES", cache)  # as if these tiny members were large
    members = []
    for seed in range(4):
        dm = bursty_datamodule(seed)  # eval_size 64, eval_batch_size 64
        dm.eval_size, dm.eval_batch_size = 80, 64  # a second, partial batch too
        callbacks = [ClampCallback([{"site": "layer0.head0.z", "op": {"kind": "mean", "over": "batch"}}])] if clamped and seed == 1 else []
        members.append(Member(tiny_module(dm, seed), dm, callbacks, None, tmp_path / str(seed), checkpoint=False))
    loop = EnsembleTrainer(members, LoopSettings(max_steps=1, val_check_interval=1))
    for trainer, m in zip(loop.trainers, members):
        for cb in m.callbacks:
            cb.setup(trainer, m.module, "fit")
    rows: list[int] = []
    loop.model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[1]))
    loop._validate()
    assert rows == ([64, 16] if clamped or cache is None else [16, 16, 16, 16, 16]) * 2  # per split: [0:64] and [64:80]
    for trainer, m in zip(loop.trainers, members):
        for split in m.datamodule.eval_split_names:
            data = m.datamodule.eval_set(split)
            sums = torch.zeros(3)
            for cb in m.callbacks:
                cb._set(trainer, "val")
            with torch.no_grad():
                for start in (0, 64):
                    batch = {k: v[start : start + 64] for k, v in data.items()}
                    for cb in m.callbacks:  # a separate run's validation: the clamp on Lightning's batch
                        cb.engine.set_batch(batch)
                    loss, acc = masked_loss_and_accuracy(m.module.model(*model_inputs(batch)), batch)
                    n = batch["loss_mask"].sum()
                    sums += torch.stack([loss * n, acc * n, n.float()])
            torch.testing.assert_close(trainer.callback_metrics[f"val/{split}/loss"], sums[0] / sums[2], atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(trainer.callback_metrics[f"val/{split}/acc"], sums[1] / sums[2], atol=2e-6, rtol=1e-5)


def test_eval_rows_slice_only_what_outgrows_the_cache() -> None:
    """Whole batches for tiny members (slicing would only multiply forwards); for 8 members of the
    singh2024 setting (d_model 64, eval batch 1000, 17 positions) a separate run's batch in all."""
    assert ensemble_trainer.eval_rows(512, 16, 5, 16) == 512
    assert ensemble_trainer.eval_rows(1000, 8, 17, 64) == 125
    assert ensemble_trainer.eval_rows(512, 16, 5, 64) == 204  # between: as many rows as fit 4 MiB
    assert ensemble_trainer.eval_rows(4, 16, 5, 64) == 4  # never more than the batch


# ---------------------------------------------------------------------------------- resuming
UNTIL = {  # released at the first validation (step 6) and fading out over steps 6-9: spans the interruption
    "site": "layer1.resid_post", "op": {"kind": "scale", "k": 0.5}, "name": "until_clamp",
    "schedule": {"until": {"metric": "val/ic/loss", "threshold": 100.0, "mode": "below", "ramp_out": 4}},
}
RESUMABLE = {"grid": {"clamp": {"none": {}, "clamped": {"trainer.callbacks+": [{"class_path": "clamp.ClampCallback", "init_args": {"interventions": [*CLAMPS, UNTIL]}}]}}}}


def _resumable_sweep(tmp_path: Path) -> Path:
    path = _sweep(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec.update(RESUMABLE)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _crash_at(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, step_of, crash_step: int | None) -> list[int]:
    """Make ``cls.method`` raise when the step is ``crash_step`` (None: never); returns the steps it ran."""
    original = getattr(cls, method)
    ran: list[int] = []

    def wrapped(self, *args, **kwargs):  # noqa: ANN001, ANN202
        step = step_of(self)
        if step == crash_step:
            raise RuntimeError(f"simulated crash at step {step}")
        ran.append(step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)
    return ran


def _scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    """The run's logged train/val curves as the reports read them (the latest write per tag and step)."""
    from clamp.report import read_scalars

    df = read_scalars(run_dir)
    df = df[df["tag"].str.startswith(("train/loss", "val/"))]
    return {(t, int(s)): float(v) for t, s, v in zip(df["tag"], df["step"], df["value"])}


RUNS = [(cond, seed) for cond in ("none", "clamped") for seed in (0, 1)]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The resumable sweep (its file, and its runs trained uninterrupted in ensembles of 2)."""
    tmp = tmp_path_factory.mktemp("whole")
    path = _resumable_sweep(tmp)
    main(["sweep", str(path), "--save_dir", str(tmp / "runs"), "--ensemble", "2"])
    return path, tmp / "runs"


def _assert_same_runs(whole_runs: Path, resumed_runs: Path, events: dict | None = None) -> None:
    """Every member ends bitwise where the uninterrupted one does: weights, optimizer, schedule, clamp
    state, emergence history (no step twice) and the event curves the reports read."""
    for cond, seed in RUNS:
        a_dir, b_dir = (root / "ens" / cond / f"seed{seed}" for root in (whole_runs, resumed_runs))
        a = torch.load(a_dir / "checkpoints" / "last.ckpt", weights_only=False)
        b = torch.load(b_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert b["global_step"] == 12 and json.loads((b_dir / "condition.json").read_text())["finished"]
        for k, v in a["state_dict"].items():
            assert torch.equal(b["state_dict"][k], v), k
        for i, st in a["optimizer_states"][0]["state"].items():
            for key, v in st.items():
                assert torch.equal(b["optimizer_states"][0]["state"][i][key], v), (i, key)
        assert b["lr_schedulers"] == a["lr_schedulers"]
        ha, hb = _history(a), _history(b)
        assert ha == hb
        for tag, points in hb.items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), f"{tag}: repeated or unordered steps {steps}"
        assert [s for s, _ in hb["train/loss"]] == list(range(1, 13)) and [s for s, _ in hb["val/ic/loss"]] == [6, 12]
        if cond == "clamped":
            ca, cb = a["callbacks"]["ClampCallback"], b["callbacks"]["ClampCallback"]
            assert cb["engine"]["released"] == ca["engine"]["released"] == {"until_clamp": 6}
            assert cb["engine"]["running_mean"].keys() == ca["engine"]["running_mean"].keys()
        if events is not None:
            assert events[cond, seed] < set(b_dir.glob("events.out.tfevents.*"))  # earlier attempts' events are kept, not deleted
        assert _scalars(b_dir) == _scalars(a_dir)
        assert json.loads((b_dir / "summary.json").read_text())["complete"] is True


def test_interrupted_ensemble_sweep_resumes_to_the_uninterrupted_result(
    whole: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Ensembles of 2 crash at step 8 (after the step-6 checkpoint, with steps 7-8 already logged);
    re-running the sweep resumes them at step 6 instead of restarting, and every member ends exactly
    (bitwise) where an uninterrupted ensemble does, a released `until` clamp fading out across the
    resume included. Exact, because a resumed member computes the same batched ops on the same data
    and state."""
    path, whole_runs = whole
    with monkeypatch.context() as mp:
        _crash_at(mp, EnsembleTrainer, "_train_step", lambda loop: loop.global_step, 8)
        with pytest.raises(SystemExit):  # both ensembles failed
            main(["sweep", str(path), "--save_dir", str(tmp_path / "resumed"), "--ensemble", "2"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # separate `clamp fit` runs would restart the step count on trained weights: refused
        main(["sweep", str(path), "--save_dir", str(tmp_path / "resumed")])
    assert capsys.readouterr().out.count("was written by an ensemble") == 4
    for cond, seed in RUNS:
        run_dir = tmp_path / "resumed" / "ens" / cond / f"seed{seed}"
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
        assert not json.loads((run_dir / "condition.json").read_text())["finished"]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    events = {run: set((tmp_path / "resumed" / "ens" / run[0] / f"seed{run[1]}").glob("events.out.tfevents.*")) for run in RUNS}
    with monkeypatch.context() as mp:
        ran = _crash_at(mp, EnsembleTrainer, "_train_step", lambda loop: loop.global_step, None)
        main(["sweep", str(path), "--save_dir", str(tmp_path / "resumed"), "--ensemble", "2"])
    assert sorted(ran) == sorted(list(range(6, 12)) * 2)  # two ensembles, each resumed at step 6: nothing redone from 0
    _assert_same_runs(whole_runs, tmp_path / "resumed", events)


def test_preempted_ensemble_sweep_checkpoints_at_the_signal_and_resumes(whole: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM during step 8 of the first ensemble: it checkpoints at step 8, writes summary.json
    marked incomplete, and the sweep stops (exit 143) before the second ensemble; the re-run resumes
    the first at step 8 and starts the second at 0 (separate ensembles), both ending bitwise as
    uninterrupted ones."""
    import os
    import signal

    path, whole_runs = whole
    original = EnsembleTrainer._train_step

    def signalled(self, batches):  # noqa: ANN001, ANN202
        original(self, batches)
        if self.global_step == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as mp:
        mp.setattr(EnsembleTrainer, "_train_step", signalled)
        with pytest.raises(SystemExit) as stopped:
            main(["sweep", str(path), "--save_dir", str(tmp_path / "runs"), "--ensemble", "2"])
    assert stopped.value.code == 128 + signal.SIGTERM
    for cond, seed in RUNS:
        run_dir = tmp_path / "runs" / "ens" / cond / f"seed{seed}"
        if cond == "none":
            assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["complete"] is False and summary["stopped"] == "interrupted by SIGTERM"
        else:  # never started
            assert not (run_dir / "checkpoints").exists() and not (run_dir / "condition.json").exists()
    assert [[(r.condition, resume_step(r)) for r in g] for g in plan_ensembles(load_sweep(path, str(tmp_path / "runs")), 4)] == [
        [("none", 8), ("none", 8)], [("clamped", 0), ("clamped", 0)]
    ]
    with monkeypatch.context() as mp:
        ran = _crash_at(mp, EnsembleTrainer, "_train_step", lambda loop: loop.global_step, None)
        main(["sweep", str(path), "--save_dir", str(tmp_path / "runs"), "--ensemble", "4"])
    assert sorted(ran) == sorted([*range(8, 12), *range(12)])
    _assert_same_runs(whole_runs, tmp_path / "runs")


def test_ensemble_resumes_a_separate_runs_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Separate `clamp fit` runs that crashed after their step-6 checkpoint continue as ensemble
    members from that checkpoint; they end where uninterrupted separate runs do, within the float
    tolerance that holds between a separate run and an ensemble member."""
    from clamp.training import TrainingModule

    path = _resumable_sweep(tmp_path)
    main(["sweep", str(path), "--save_dir", str(tmp_path / "separate")])
    with monkeypatch.context() as mp:
        _crash_at(mp, TrainingModule, "training_step", lambda module: module.trainer.global_step, 8)
        with pytest.raises(SystemExit):
            main(["sweep", str(path), "--save_dir", str(tmp_path / "resumed")])
    with monkeypatch.context() as mp:
        ran = _crash_at(mp, EnsembleTrainer, "_train_step", lambda loop: loop.global_step, None)
        main(["sweep", str(path), "--save_dir", str(tmp_path / "resumed"), "--ensemble", "4"])
    assert sorted(ran) == list(range(6, 12))  # one ensemble of all four, resumed at step 6
    for cond, seed in RUNS:
        a = torch.load(tmp_path / "separate" / "ens" / cond / f"seed{seed}" / "checkpoints" / "last.ckpt", weights_only=False)
        b = torch.load(tmp_path / "resumed" / "ens" / cond / f"seed{seed}" / "checkpoints" / "last.ckpt", weights_only=False)
        ha, hb = _history(a), _history(b)
        assert sorted(ha) == sorted(hb)
        for tag in ("train/loss", "val/ic/loss", "val/iw/acc", "curves/task/loss"):
            assert [s for s, _ in hb[tag]] == [s for s, _ in ha[tag]], tag
            torch.testing.assert_close(torch.tensor([v for _, v in hb[tag]]), torch.tensor([v for _, v in ha[tag]]), atol=2e-5, rtol=1e-5, msg=tag)
        for k, v in a["state_dict"].items():
            torch.testing.assert_close(b["state_dict"][k], v, atol=2e-5, rtol=1e-4)
        if cond == "clamped":
            assert b["callbacks"]["ClampCallback"]["engine"]["released"] == {"until_clamp": 6}


def _fake_checkpoint(run, step: int, **extra) -> None:  # noqa: ANN001 (a sweep Run)
    run.last_ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "optimizer_states": [], "lr_schedulers": [], **extra}, run.last_ckpt)


def test_runs_resuming_at_different_steps_never_share_an_ensemble(tmp_path: Path) -> None:
    runs = load_sweep(_sweep(tmp_path), str(tmp_path / "runs"))
    for run in runs:
        run.write_config()
    _fake_checkpoint(runs[1], 6)
    _fake_checkpoint(runs[2], 6)
    groups = plan_ensembles(runs, 4)
    assert [[r.dir.name for r in g] for g in groups] == [["seed0", "seed1"], ["seed1", "seed0"]]  # step 0: runs 0, 3; step 6: runs 1, 2
    assert [groups[0][0], groups[0][1], groups[1][0], groups[1][1]] == [runs[0], runs[3], runs[1], runs[2]]
    with pytest.raises(EnsembleError, match=r"start from different steps .*seed0': 0.*seed1': 6"):
        train_ensemble(runs[:2])
    assert runs[1].last_ckpt.exists()  # refused before anything was deleted


def test_a_checkpoint_that_cannot_be_resumed_is_an_error_naming_the_run(tmp_path: Path) -> None:
    runs = load_sweep(_sweep(tmp_path), str(tmp_path / "runs"))
    for run in runs:
        run.write_config()
    runs[0].last_ckpt.parent.mkdir(parents=True)
    runs[0].last_ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(EnsembleError, match=rf"run {runs[0].dir}: cannot read checkpoint .*last.ckpt .*delete it to restart"):
        train_ensemble(runs[:1])
    assert [len(g) for g in plan_ensembles(runs, 4)] == [1, 3]  # alone: its failure is its own
    _fake_checkpoint(runs[0], 6)
    with pytest.raises(EnsembleError, match=rf"run {runs[0].dir}: the weights in checkpoint .* do not fit the model: .*Missing key"):
        train_ensemble(runs[:1])
    hparams = dict(_build_member(runs[0])[0].module.hparams)
    hparams["optimizer"] = {**hparams["optimizer"], "lr": 0.5}
    _fake_checkpoint(runs[0], 6, hyper_parameters=hparams)
    with pytest.raises(EnsembleError, match=rf"resuming {runs[0].dir} with a different experiment than its checkpoint .*last.ckpt \(model.optimizer.lr: 0.5 -> 0.001\)"):
        train_ensemble(runs[:1])
    assert runs[0].last_ckpt.exists()
