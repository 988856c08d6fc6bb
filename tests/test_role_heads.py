"""Heads chosen by role (clamp.interventions.roles): measured once, on a reference or on this run at a
step, logged, checkpointed, in summary.json, identical on resume; bad roles fail at set-up."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from clamp import ClampCallback, EmergenceCallback
from clamp.interventions import roles as roles_module
from clamp.metrics import heads
from clamp.training import OptimizerConfig, TrainingModule
from models import TransformerConfig
from tests.helpers import bursty_datamodule, checkpoint_every_validation, trainer

N_HEADS = 4
PROBE = {"probe_size": 32}


def module(dm, seed: int = 0) -> TrainingModule:
    L.seed_everything(seed, verbose=False)
    return TrainingModule(TransformerConfig(n_layers=2, n_heads=N_HEADS, d_model=16), OptimizerConfig(lr=3e-3), dm.spec)


def prev_token_scores(model: torch.nn.Module, dm) -> torch.Tensor:
    """Layer 0's previous-token scores, computed here from the emergence probe (not through roles)."""
    probes = EmergenceCallback(probe_size=32, causal=False)._build_probes(SimpleNamespace(datamodule=dm), SimpleNamespace(model=model, device=torch.device("cpu")))
    model.eval()
    return heads.all_head_scores(model, probes["task"])["prev_token"][0]


def swap_heads(state: dict[str, torch.Tensor], layer: int, a: int, b: int, d_model: int = 16) -> dict[str, torch.Tensor]:
    """The same model with heads a and b of ``layer`` exchanged (q, k, v rows and output columns)."""
    out = {k: v.clone() for k, v in state.items()}
    dh = d_model // N_HEADS
    pre = f"model.blocks.{layer}.attn."
    for part in range(3):
        for key in ("qkv.weight", "qkv.bias"):
            w, base = out[pre + key], part * d_model
            ra, rb = slice(base + a * dh, base + (a + 1) * dh), slice(base + b * dh, base + (b + 1) * dh)
            w[ra], w[rb] = state[pre + key][rb].clone(), state[pre + key][ra].clone()
    w = out[pre + "out.weight"]
    w[:, a * dh : (a + 1) * dh], w[:, b * dh : (b + 1) * dh] = state[pre + "out.weight"][:, b * dh : (b + 1) * dh].clone(), state[pre + "out.weight"][:, a * dh : (a + 1) * dh].clone()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A short trained run of seed 0 in a run folder layout (runs/<exp>/<cond>/seed0/checkpoints/last.ckpt)."""
    root = tmp_path_factory.mktemp("ref")
    dm = bursty_datamodule(seed=0)
    t = trainer(root / "train", 6)
    t.fit(module(dm), datamodule=dm)
    run = root / "s1" / "base" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    t.save_checkpoint(run / "checkpoints" / "last.ckpt")
    return run


def clamp_with(role: dict, site: str = "layer0.head{prev}.z", **extra) -> ClampCallback:
    return ClampCallback([{"name": "ablate_prev", "site": site, "op": {"kind": "zero"}}], roles={"prev": {"layer": 0, "metric": "task/prev_token", **PROBE, **role}}, **extra)


def bound_heads(clamp: ClampCallback) -> list[int]:
    return sorted(h for b in clamp.engine.bound for _, h in b.targets)


def test_reference_role_follows_the_heads_not_their_indices(reference: Path, tmp_path: Path) -> None:
    """Top and bottom by the reference's scores, `{seed}` filled; a reference with heads swapped moves the choice."""
    dm = bursty_datamodule(seed=0)
    ckpt = reference / "checkpoints" / "last.ckpt"
    ref = module(dm)
    ref.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    scores = prev_token_scores(ref.model, dm)
    best, worst = int(scores.argmax()), int(scores.argmin())
    template = str(reference).replace("seed0", "seed{seed}")
    chosen = {}
    for order in ("top", "bottom"):
        clamp = clamp_with({"reference": template, "order": order})
        trainer(tmp_path / order, 1, [clamp]).fit(module(dm, seed=5), datamodule=dm)
        chosen[order] = bound_heads(clamp)
        assert clamp.roles.choices["prev"].scores == pytest.approx(scores.tolist(), abs=1e-6)
    assert chosen == {"top": [best], "bottom": [worst]}

    other = (best + 1) % N_HEADS  # the same weights with the best head moved to another index
    ckpt_obj = torch.load(ckpt, weights_only=False)
    ckpt_obj["state_dict"] = swap_heads(ckpt_obj["state_dict"], 0, best, other)
    torch.save(ckpt_obj, tmp_path / "swapped.ckpt")
    clamp = clamp_with({"reference": str(tmp_path / "swapped.ckpt"), "complement": True})
    trainer(tmp_path / "swapped", 1, [clamp]).fit(module(dm, seed=5), datamodule=dm)
    assert bound_heads(clamp) == sorted(set(range(N_HEADS)) - {other})


class Alphas(Callback):
    """Each step's alpha of one intervention (set at batch start, read at batch end)."""

    def __init__(self, clamp: ClampCallback, label: str) -> None:
        self.clamp, self.label, self.alphas = clamp, label, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.alphas[trainer.global_step - 1] = self.clamp.engine.alphas[self.label]


def test_step_role_measured_once_and_identical_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inactive before its step, measured there on this run, checkpointed; resumes before and after the
    step end with the same heads and bitwise the same weights as the uninterrupted run."""
    total, at = 8, 3
    dm = bursty_datamodule(seed=2)
    role = {"at_step": at, "k": 2}
    full_clamp = clamp_with(role)
    alphas = Alphas(full_clamp, "ablate_prev")
    emerge = EmergenceCallback(every_n_steps=4, probe_size=16, causal=False, heatmap_every_n_steps=0)
    run = trainer(tmp_path / "full", total, [full_clamp, alphas, emerge, checkpoint_every_validation(tmp_path / "full")], val_check_interval=2)
    full_model = module(dm, seed=2)
    run.fit(full_model, datamodule=dm)
    choice = full_clamp.roles.choices["prev"]
    assert choice.step == at and len(choice.heads) == 2
    assert alphas.alphas == {s: (0.0 if s < at else 1.0) for s in range(total)}
    assert bound_heads(full_clamp) == choice.heads
    saved = torch.load(tmp_path / "full" / "ckpt" / "step=4.ckpt", weights_only=True)["callbacks"]["ClampCallback"]["roles"]
    assert saved["prev"]["heads"] == choice.heads
    summary = json.loads((Path(run.log_dir) / "summary.json").read_text())
    assert summary["interventions"][0]["roles"]["prev"]["heads"] == choice.heads
    assert summary["interventions"][0]["site"] == f"layer0.head[{','.join(map(str, choice.heads))}].z"

    real_measure = roles_module.measure
    for cut, measures in ((2, 1), (4, 0)):  # before the step: measured at it; after: restored, never measured
        calls = []
        monkeypatch.setattr(roles_module, "measure", lambda *a, **k: calls.append(1) or real_measure(*a, **k))
        dm2 = bursty_datamodule(seed=2)
        clamp = clamp_with(role)
        resumed = module(dm2, seed=7)
        trainer(tmp_path / f"res{cut}", total, [clamp]).fit(resumed, datamodule=dm2, ckpt_path=tmp_path / "full" / "ckpt" / f"step={cut}.ckpt")
        assert len(calls) == measures, cut
        assert clamp.roles.choices["prev"].heads == choice.heads and bound_heads(clamp) == choice.heads
        for (k, a), b in zip(full_model.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), (cut, k)


def test_reference_role_is_not_measured_again_on_resume(reference: Path, tmp_path: Path) -> None:
    """The saved choice wins even when the reference changed since (a rerun of study 1, say)."""
    dm = bursty_datamodule(seed=0)
    clamp = clamp_with({"reference": str(reference)})
    trainer(tmp_path / "a", 4, [clamp, checkpoint_every_validation(tmp_path / "a")], val_check_interval=2).fit(module(dm), datamodule=dm)
    first = clamp.roles.choices["prev"].heads
    moved = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)
    moved["state_dict"] = swap_heads(moved["state_dict"], 0, first[0], (first[0] + 1) % N_HEADS)
    torch.save(moved, tmp_path / "moved.ckpt")
    resumed = clamp_with({"reference": str(reference)})
    ref_ckpt = reference / "checkpoints" / "last.ckpt"
    original = ref_ckpt.read_bytes()
    try:
        ref_ckpt.write_bytes((tmp_path / "moved.ckpt").read_bytes())
        trainer(tmp_path / "b", 4, [resumed]).fit(module(dm), datamodule=dm, ckpt_path=tmp_path / "a" / "ckpt" / "step=2.ckpt")
    finally:
        ref_ckpt.write_bytes(original)
    assert resumed.roles.choices["prev"].heads == first and bound_heads(resumed) == first


@pytest.mark.parametrize(
    ("role", "site", "match"),
    [
        ({"metric": "task/prev_tokn", "at_step": 0}, "layer0.head{prev}.z", r"metric='task/prev_tokn' is not a head score.*valid: \[.*'task/prev_token'"),
        ({"layer": 2, "at_step": 0}, "layer0.head{prev}.z", r"roles.prev.layer=2 out of range; valid layers are 0..1"),
        ({"k": 5, "at_step": 0}, "layer0.head{prev}.z", r"roles.prev.k=5: layer 0 has 4 heads; valid k is 1..4"),
        ({"order": "best", "at_step": 0}, "layer0.head{prev}.z", r"roles.prev.order='best'; valid: \['top', 'bottom'\]"),
        ({"reference": "nowhere/seed{seed}"}, "layer0.head{prev}.z", r"roles.prev.reference='nowhere/seed\{seed\}': 'nowhere/seed3/checkpoints/last.ckpt'|'nowhere/seed3' does not exist"),
        ({"at_step": 0}, "layer0.head{kept}.z", r"refers to role\(s\) \['kept'\].*defined: \['prev'\]"),
        ({"at_step": 10}, "layer0.head{prev}.z", r"at_step=10 is not before trainer.max_steps=10"),
        ({"at_step": 0, "reference": "x"}, "layer0.head{prev}.z", r"exactly one of `reference`"),
    ],
)
def test_bad_roles_fail_at_setup_naming_the_value(role: dict, site: str, match: str) -> None:
    dm = bursty_datamodule(seed=3)
    clamp = clamp_with(role, site=site)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        clamp.check(SimpleNamespace(max_steps=10, callbacks=[], datamodule=dm), module(dm), dm)


def test_role_in_op_arguments_and_unknown_keys() -> None:
    """`head: "{r}"` becomes an int (one head) or a list; a misspelt role key is named with the valid ones."""
    spec = ClampCallback([{"name": "x", "site": "logits", "op": {"kind": "construct", "fn": "f", "kwargs": {"head": "{r}", "note": "L{r}"}}}]).interventions[0]
    assert roles_module.fill_heads(spec, {"r": [3]}).op["kwargs"] == {"head": 3, "note": "L[3]"}
    assert roles_module.fill_heads(spec, {"r": [1, 2]}).op["kwargs"]["head"] == [1, 2]
    with pytest.raises(ValueError, match=r"roles.r: unknown key\(s\) \['top'\]; valid keys: \['layer', 'metric', 'k'"):
        ClampCallback([], roles={"r": {"layer": 0, "metric": "task/prev_token", "top": 1}})


def test_roles_in_an_ensemble_equal_separate_runs(reference: Path, tmp_path: Path) -> None:
    """Members measure their own model at the step (and the reference at the start) as separate runs do."""
    from clamp.ensemble.trainer import EnsembleTrainer, LoopSettings, Member

    def clamp() -> ClampCallback:
        return ClampCallback(
            [{"name": "a", "site": "layer0.head{prev}.z", "op": {"kind": "zero"}}, {"name": "b", "site": "layer1.head{ind}.z", "op": {"kind": "zero"}}],
            roles={"prev": {"layer": 0, "metric": "task/prev_token", "at_step": 2, "k": 2, **PROBE},
                   "ind": {"layer": 1, "metric": "task/induction_strength", "reference": str(reference), "complement": True, **PROBE}},
        )

    members, separate = [], []
    for seed in (0, 1):
        dm = bursty_datamodule(seed)
        members.append(Member(module(dm, seed), dm, [clamp()], None, tmp_path / f"e{seed}", checkpoint=False))
        dm2, c = bursty_datamodule(seed), clamp()
        model = module(dm2, seed)
        trainer(tmp_path / f"s{seed}", 4, [c], val_check_interval=4).fit(model, datamodule=dm2)
        separate.append((c, model))
    EnsembleTrainer(members, LoopSettings(max_steps=4, val_check_interval=4)).fit()
    for m, (c, model) in zip(members, separate):
        ens = m.callbacks[0]
        for name in ("prev", "ind"):
            assert ens.roles.choices[name].heads == c.roles.choices[name].heads, name
            assert ens.roles.choices[name].scores == pytest.approx(c.roles.choices[name].scores, abs=1e-5), name
        assert bound_heads(ens) == bound_heads(c)
        for a, b in zip(m.module.model.parameters(), model.model.parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_seed_in_an_op_reference_is_this_runs_seed(reference: Path) -> None:
    """`clamp_to_reference` may name the same seed's run as roles do (one sweep file for every seed: study 7's grafts)."""
    ckpt = str(reference / "checkpoints" / "last.ckpt").replace("seed0", "seed{seed}")
    spec = {"name": "graft", "site": "layer0.resid_post", "op": {"kind": "clamp_to_reference", "reference": ckpt}}
    dm = bursty_datamodule(seed=0)
    clamp = ClampCallback([spec])
    clamp.check(SimpleNamespace(datamodule=dm, max_steps=10, callbacks=[]), module(dm))
    assert clamp.engine.reference_keys() == [ckpt.replace("{seed}", "0")]
    assert clamp.interventions[0].label == "graft"
    other = bursty_datamodule(seed=3)  # seed 3 has no run: the filled path is named
    with pytest.raises(FileNotFoundError, match="seed3"):
        ClampCallback([spec]).check(SimpleNamespace(datamodule=other, max_steps=10, callbacks=[]), module(other))
