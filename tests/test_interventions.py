"""Every intervention op against an independent hand computation on a tiny transformer.

Expectations are built from activations cached *without* the engine (``run_with_cache`` on the
plain model) plus explicit linear algebra on the weights, never from the engine's own code path.
The read hooks of ``run_with_cache`` run after the engine's hooks, so a cached site shows the
value after the intervention.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clamp.interventions import InterventionEngine, Schedule, intervene
from models import Transformer, TransformerConfig
from models.sites import Site

torch.set_num_threads(1)

B, T, V, H, D, DH = 6, 8, 16, 4, 32, 8
TOK = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
TOK2 = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
TOK3 = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
ATOL = 1e-5


def make_model(seed: int = 0, **overrides) -> Transformer:
    """The tiny test model; parameters are perturbed so biases / LN params are non-trivial and patterns sharp."""
    torch.manual_seed(seed)
    kw = dict(n_layers=2, n_heads=H, d_model=D, attn_only=False)
    kw.update(overrides)
    m = Transformer(TransformerConfig(**kw).resolved(d_vocab=V, n_ctx=T))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.fixture
def model() -> Transformer:
    return make_model(0)


def cache(model: Transformer, names: list[str], tokens: torch.Tensor = TOK) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.run_with_cache(tokens, names=names)[1]


def attn_out_from_z(model: Transformer, z: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """sum_h z_h @ W_O[h] + b_O, with W_O[h] sliced by hand from the fused output projection."""
    out = model.blocks[layer].attn.out
    total = sum(z[:, h] @ out.weight[:, h * DH : (h + 1) * DH].T for h in range(H))
    return total + out.bias


def mlp_out_from_resid_mid(model: Transformer, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
    blk = model.blocks[layer]
    h = F.layer_norm(x, (D,), blk.ln2.weight, blk.ln2.bias, blk.ln2.eps)
    h = F.gelu(h @ blk.mlp.fc_in.weight.T + blk.mlp.fc_in.bias)
    return h @ blk.mlp.fc_out.weight.T + blk.mlp.fc_out.bias


def qkv_rows(head: int) -> list[int]:
    """Rows of the fused qkv weight that belong to ``head`` (q, k and v blocks)."""
    return [i * H * DH + head * DH + d for i in range(3) for d in range(DH)]


def no_site_active(model: Transformer) -> bool:
    return not any(s.active for s in model.site_map().values())


def grads_of(model: Transformer, tokens: torch.Tensor = TOK) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(tokens)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * w).sum().backward()
    g = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), g


# =========================================================================== value ops


def test_zero_one_head_matches_hand_computed_attn_out(model: Transformer) -> None:
    clean = cache(model, ["layer0.z", "layer0.attn_out"])
    with intervene(model, [{"site": "layer0.head1.z", "op": {"kind": "zero"}}]):
        got = cache(model, ["layer0.z", "layer0.attn_out"])
    z = clean["layer0.z"]
    out = model.blocks[0].attn.out
    expected = sum(z[:, h] @ out.weight[:, h * DH : (h + 1) * DH].T for h in range(H) if h != 1) + out.bias
    assert torch.allclose(got["layer0.attn_out"], expected, atol=ATOL)
    assert not torch.allclose(clean["layer0.attn_out"], expected, atol=1e-3)  # the head mattered
    assert torch.all(got["layer0.z"][:, 1] == 0)
    for h in (0, 2, 3):
        assert torch.allclose(got["layer0.z"][:, h], z[:, h], atol=ATOL)


def test_scale_with_half_strength_is_one_and_a_half_x_and_propagates(model: Transformer) -> None:
    clean = cache(model, ["layer0.resid_mid"])
    spec = {"site": "layer0.resid_mid", "op": {"kind": "scale", "k": 2.0}, "schedule": {"strength": 0.5}}
    with intervene(model, [spec]):
        got = cache(model, ["layer0.resid_mid", "layer0.mlp_out"])
    x = clean["layer0.resid_mid"]
    assert torch.allclose(got["layer0.resid_mid"], 1.5 * x, atol=ATOL)
    assert torch.allclose(got["layer0.mlp_out"], mlp_out_from_resid_mid(model, 1.5 * x), atol=ATOL)


def test_interpolation_alpha_quarter_strength_and_ramp(model: Transformer) -> None:
    x = cache(model, ["layer1.resid_pre"])["layer1.resid_pre"]
    expected = 0.75 * x + 0.25 * 3.0
    with intervene(model, [{"site": "layer1.resid_pre", "op": {"kind": "constant", "value": 3.0}, "schedule": {"strength": 0.25}}]):
        got = cache(model, ["layer1.resid_pre"])["layer1.resid_pre"]
    assert torch.allclose(got, expected, atol=ATOL)
    # the same alpha reached through a ramp: 1/4 at the first of 4 ramp steps
    engine = InterventionEngine(model, [{"site": "layer1.resid_pre", "op": {"kind": "constant", "value": 3.0}, "schedule": {"start": 10, "ramp": 4}}])
    assert engine.update(10)["layer1.resid_pre:constant"] == pytest.approx(0.25)
    got = cache(model, ["layer1.resid_pre"])["layer1.resid_pre"]
    engine.detach()
    assert torch.allclose(got, expected, atol=ATOL)


def test_mean_over_batch_only_at_selected_positions(model: Transformer) -> None:
    z = cache(model, ["layer0.z"])["layer0.z"]
    with intervene(model, [{"site": "layer0.head2.z", "op": {"kind": "mean"}, "positions": [1, -1]}]):
        got = cache(model, ["layer0.z"])["layer0.z"]
    expected = z.clone()
    for p in (1, T - 1):
        expected[:, 2, p] = z[:, 2, p].mean(0)
    assert torch.allclose(got, expected, atol=ATOL)
    assert not torch.allclose(got[:, 2, 1], z[:, 2, 1], atol=1e-3)
    assert torch.allclose(got[:, 2, 0], z[:, 2, 0], atol=ATOL)  # unselected position untouched


def test_mean_over_batch_and_positions(model: Transformer) -> None:
    x = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]
    with intervene(model, [{"site": "layer0.resid_mid", "op": {"kind": "mean", "over": "batch_pos"}}]):
        got = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]
    assert torch.allclose(got, x.mean(dim=(0, 1)).expand_as(x), atol=ATOL)


def test_running_mean_ema_updates_once_per_optimizer_step_per_head(model: Transformer) -> None:
    z1, z2, z3 = (cache(model, ["layer0.z"], t)["layer0.z"] for t in (TOK, TOK2, TOK3))
    mom = 0.25
    engine = InterventionEngine(model, [{"site": "layer0.head*.z", "op": {"kind": "mean", "over": "running", "momentum": mom}}])
    engine.set_mode("val")
    engine.update(0)
    got0 = cache(model, ["layer0.z"], TOK)["layer0.z"]  # no EMA yet: the batch mean, and no EMA is started
    assert torch.allclose(got0, z1.mean(0).expand_as(z1), atol=ATOL)
    engine.set_mode("train")
    engine.update(0)
    got1 = cache(model, ["layer0.z"], TOK)["layer0.z"]
    engine.update(1)
    got2 = cache(model, ["layer0.z"], TOK2)["layer0.z"]
    engine.set_mode("val")  # validation reads the EMA without updating it
    got3 = cache(model, ["layer0.z"], TOK3)["layer0.z"]
    engine.detach()
    m1 = z1.mean(0)
    ema = m1 + mom * (z2.mean(0) - m1)
    assert torch.allclose(got1, m1.expand_as(z1), atol=ATOL)
    assert torch.allclose(got2, ema.expand_as(z2), atol=ATOL)
    assert torch.allclose(got3, ema.expand_as(z3), atol=ATOL)
    del z3


def test_running_mean_micro_batches_of_one_step_make_one_update(model: Transformer) -> None:
    """accumulate_grad_batches: the micro-batches of a step are averaged, then the EMA moves once."""
    z1, z2, z3 = (cache(model, ["layer0.z"], t)["layer0.z"] for t in (TOK, TOK2, TOK3))
    mom = 0.25
    engine = InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "mean", "over": "running", "momentum": mom}}])
    engine.update(0)
    cache(model, ["layer0.z"], TOK)
    engine.update(1)
    cache(model, ["layer0.z"], TOK2)  # two micro-batches of step 1
    cache(model, ["layer0.z"], TOK3)
    engine.set_mode("val")
    got = cache(model, ["layer0.z"], TOK)["layer0.z"]
    engine.detach()
    m1 = z1.mean(0)
    want = m1 + mom * ((z2.mean(0) + z3.mean(0)) / 2 - m1)
    assert torch.allclose(got, want.expand_as(got), atol=ATOL)


def test_resample_is_a_cyclic_shift_of_the_batch_on_the_selected_head(model: Transformer) -> None:
    z = cache(model, ["layer0.z"])["layer0.z"]
    with intervene(model, [{"site": "layer0.head0.z", "op": {"kind": "resample"}}]):
        got = cache(model, ["layer0.z"])["layer0.z"]
    shifts = [s for s in range(B) if torch.allclose(got[:, 0], z[(torch.arange(B) + s) % B, 0], atol=ATOL)]
    assert len(shifts) == 1 and shifts[0] != 0
    assert torch.allclose(got[:, 1:], z[:, 1:], atol=ATOL)


def test_noise_std_selection_and_determinism(model: Transformer) -> None:
    x = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]

    def noisy(seed: int, step: int, strength: float = 1.0, site: str = "layer0.resid_mid") -> torch.Tensor:
        engine = InterventionEngine(model, [{"site": site, "op": {"kind": "noise", "std": 0.5}, "schedule": {"strength": strength}}], seed=seed)
        engine.update(step)
        name = site.replace(".head1", "")
        out = cache(model, [name])[name]
        engine.detach()
        return out

    d = noisy(0, 3) - x
    n = d.numel()
    assert abs(d.std().item() - 0.5) < 6 * 0.5 / math.sqrt(2 * n)
    assert abs(d.mean().item()) < 6 * 0.5 / math.sqrt(n)
    d_half = noisy(0, 3, strength=0.5) - x
    assert abs(d_half.std().item() - 0.25) < 6 * 0.25 / math.sqrt(2 * n)
    assert torch.equal(noisy(0, 3), noisy(0, 3))  # same seed and step: same noise
    assert not torch.allclose(noisy(0, 4), noisy(0, 3))  # next step: fresh noise
    assert not torch.allclose(noisy(1, 3), noisy(0, 3))  # other seed: other noise
    z = cache(model, ["layer0.z"])["layer0.z"]
    zn = noisy(0, 3, site="layer0.head1.z")
    assert torch.allclose(zn[:, [0, 2, 3]], z[:, [0, 2, 3]], atol=ATOL)
    assert (zn[:, 1] - z[:, 1]).abs().min() > 0


def _save_constant(kind: str, v: torch.Tensor, tmp_path) -> object:
    if kind == "list":
        return v.tolist()
    path = tmp_path / f"value.{kind}"
    if kind == "npy":
        np.save(path, v.numpy())
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({"value": v.contiguous()}, str(path))
    else:
        torch.save(v, path)
    return str(path)


@pytest.mark.parametrize("kind", ["npy", "safetensors", "pt", "list"])
def test_constant_from_file_or_list_with_positions_and_features(model: Transformer, kind: str, tmp_path) -> None:
    v = torch.randn(T, DH, generator=torch.Generator().manual_seed(5)) * 3  # [pos, d_head] for one head of z
    value = _save_constant(kind, v, tmp_path)
    z = cache(model, ["layer0.z"])["layer0.z"]
    spec = {"site": "layer0.head2.z", "op": {"kind": "constant", "value": value}, "positions": [2, 5], "features": [0, -1]}
    with intervene(model, [spec]):
        got = cache(model, ["layer0.z", "layer0.attn_out"])
    expected = z.clone()
    for p in (2, 5):
        for f in (0, DH - 1):
            expected[:, 2, p, f] = v[p, f]
    assert torch.allclose(got["layer0.z"], expected, atol=ATOL)
    assert torch.allclose(got["layer0.attn_out"], attn_out_from_z(model, expected), atol=ATOL)


def test_constant_broadcasts_inline_vector_and_scalar(model: Transformer) -> None:
    x = cache(model, ["layer1.resid_mid"])["layer1.resid_mid"]
    vec = torch.arange(D, dtype=torch.float32)
    with intervene(model, [{"site": "layer1.resid_mid", "op": {"kind": "constant", "value": vec.tolist()}, "positions": [0]}]):
        got = cache(model, ["layer1.resid_mid"])["layer1.resid_mid"]
    expected = x.clone()
    expected[:, 0] = vec
    assert torch.allclose(got, expected, atol=ATOL)
    with intervene(model, [{"site": "layer1.resid_mid", "op": {"kind": "constant", "value": -2.0}, "features": [3]}]):
        got = cache(model, ["layer1.resid_mid"])["layer1.resid_mid"]
    expected = x.clone()
    expected[..., 3] = -2.0
    assert torch.allclose(got, expected, atol=ATOL)


def test_construct_previous_token_pattern_on_one_head(model: Transformer) -> None:
    clean = cache(model, ["layer0.pattern", "layer0.v", "layer0.z"])
    spec = {"site": "layer0.head1.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}}
    with intervene(model, [spec]):
        got = cache(model, ["layer0.pattern", "layer0.z"])
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    for i in range(1, T):
        prev[i, i - 1] = 1
    assert torch.equal(got["layer0.pattern"][:, 1], prev.expand(B, T, T))
    for h in (0, 2, 3):
        assert torch.allclose(got["layer0.pattern"][:, h], clean["layer0.pattern"][:, h], atol=ATOL)
        assert torch.allclose(got["layer0.z"][:, h], clean["layer0.z"][:, h], atol=ATOL)
    v = clean["layer0.v"][:, 1]
    src = [0] + list(range(T - 1))
    assert torch.allclose(got["layer0.z"][:, 1], v[:, src], atol=ATOL)


# =========================================================================== references


def _other_model_sharing_layer1(main: Transformer) -> Transformer:
    """A different model whose embeddings and layer 0 differ but layer 1 / unembed equal ``main``'s."""
    other = copy.deepcopy(main)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.startswith(("W_E", "W_pos", "blocks.0.")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return other


def _save_ckpt(model: Transformer, path, fmt: str) -> str:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if fmt == "lightning":
        torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 0}, path)
    elif fmt == "state_dict":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["lightning", "state_dict", "safetensors"])
def test_clamp_to_reference_checkpoint_reproduces_site_and_downstream(model: Transformer, tmp_path, fmt: str) -> None:
    other = _other_model_sharing_layer1(model)
    ckpt = _save_ckpt(other, tmp_path / ("ref.safetensors" if fmt == "safetensors" else "ref.ckpt"), fmt)
    names = ["layer0.pattern", "layer0.resid_post", "layer1.pattern", "logits"]
    mine, theirs = cache(model, names), cache(other, names)
    with intervene(model, [{"site": "layer0.resid_post", "op": {"kind": "clamp_to_reference", "reference": ckpt}}]):
        got = cache(model, names)
    assert torch.allclose(got["layer0.pattern"], mine["layer0.pattern"], atol=ATOL)  # upstream: own values
    for n in ("layer0.resid_post", "layer1.pattern", "logits"):  # clamped site and everything downstream: the other's
        assert torch.allclose(got[n], theirs[n], atol=ATOL), n
        assert not torch.allclose(got[n], mine[n], atol=1e-3), n


def test_clamp_to_reference_per_head_and_no_gradient_through_the_clamp(model: Transformer, tmp_path) -> None:
    other = _other_model_sharing_layer1(model)
    ckpt = _save_ckpt(other, tmp_path / "ref.ckpt", "lightning")
    mine, theirs = cache(model, ["layer0.pattern"]), cache(other, ["layer0.pattern"])
    with intervene(model, [{"site": "layer0.head3.pattern", "op": {"kind": "clamp_to_reference", "reference": ckpt}}]):
        got = cache(model, ["layer0.pattern"])["layer0.pattern"]
    assert torch.allclose(got[:, 3], theirs["layer0.pattern"][:, 3], atol=ATOL)
    assert torch.allclose(got[:, :3], mine["layer0.pattern"][:, :3], atol=ATOL)
    # the whole residual stream clamped: nothing upstream of it learns
    with intervene(model, [{"site": "layer0.resid_post", "op": {"kind": "clamp_to_reference", "reference": ckpt}}]):
        _, g = grads_of(model)
    for n in ("W_E.weight", "W_pos.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc_in.weight"):
        assert torch.all(g[n] == 0), n
    assert g["blocks.1.attn.qkv.weight"].abs().sum() > 0


@pytest.mark.parametrize(
    "iv",
    [
        {"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}},
        {"site": "layer0.head*.z", "op": {"kind": "zero"}},
        {"site": "layer0.pattern", "op": {"kind": "constant", "value": [[1.0 if k == max(q - 1, 0) else 0.0 for k in range(T)] for q in range(T)]}},
        {"site": "layer0.head*.z", "op": {"kind": "mean", "over": "batch"}},
    ],
    ids=["reference", "zero", "constant", "mean"],
)
def test_full_replacement_cuts_the_graph_with_the_same_values_and_gradients(iv: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole activation replaced at alpha 1 is returned as the value itself: backward skips what
    produced it. Outputs and gradients equal the masked formula's, parameters cut off get zeros."""
    results = {}
    for cut in (False, True):
        m = make_model(0)
        m.blocks[0].attn.qkv.weight.data.mul_(1.5)  # the init reference differs from the trained-to-be model
        engine = InterventionEngine(m, [iv], seed=0)
        engine.load_references()
        with torch.no_grad():
            m.blocks[0].attn.qkv.weight.mul_(2.0)
        monkeypatch.setattr(InterventionEngine, "_may_cut_graph", staticmethod(lambda cut=cut: cut))
        engine.mode = "train"
        engine.update(0)
        m.zero_grad(set_to_none=True)
        out = m(TOK)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        assert engine.graph_cut is cut
        engine.fill_missing_grads(m.parameters())
        assert not engine.graph_cut
        results[cut] = (out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
        engine.detach()
    (out0, g0), (out1, g1) = results[False], results[True]
    assert torch.allclose(out0, out1, atol=ATOL)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=ATOL), n


@pytest.mark.parametrize(
    ("iv", "skipped"),
    [
        ({"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}, True),
        ({"site": "layer0.pattern", "op": {"kind": "zero"}}, True),
        ({"site": "layer0.head1.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}, False),  # one head of eight
        ({"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}, "schedule": {"strength": 0.5}}, False),
        ({"site": "layer0.head*.pattern", "op": {"kind": "mean", "over": "batch"}}, False),  # its value reads x
    ],
    ids=["reference", "zero", "one-head", "half-strength", "mean"],
)
def test_a_pattern_replaced_whole_without_being_read_is_not_computed(iv: dict, skipped: bool) -> None:
    """The model skips the scores and softmax of a pattern that the first hook replaces whole with a
    value that ignores it (the values and gradients are those of the computed path: the test above)."""
    from torch.profiler import profile

    m = make_model(0)
    engine = InterventionEngine(m, [iv], seed=0)
    engine.load_references()
    engine.mode = "train"
    engine.update(0)
    site = m.site("layer0.pattern")
    assert site.overwrites(torch.empty(TOK.shape[0], m.n_heads, TOK.shape[1], TOK.shape[1])) is skipped
    with profile() as prof:
        m(TOK).sum().backward()
    softmaxes = sum(e.count for e in prof.key_averages() if e.key == "aten::_softmax")
    from_reference = iv["op"]["kind"] == "clamp_to_reference"  # the reference model computes its own pattern
    assert softmaxes == int(from_reference) + (0 if skipped else 1)  # layer 1 runs the fused kernel either way
    engine.detach()
    reader = m.site("layer0.pattern").add_hook(lambda x, s: None)  # a reader before the clamp sees the real pattern
    engine = InterventionEngine(m, [iv], seed=0)
    engine.load_references()
    engine.update(0)
    assert not site.overwrites(torch.empty(TOK.shape[0], m.n_heads, TOK.shape[1], TOK.shape[1]))
    reader()
    engine.detach()


def test_partial_or_ramped_replacement_keeps_the_graph(model: Transformer) -> None:
    for iv in (
        {"site": "layer0.head1.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}},
        {"site": "layer0.head*.z", "op": {"kind": "zero"}, "schedule": {"strength": 0.5}},
    ):
        engine = InterventionEngine(model, [iv], seed=0)
        engine.load_references()
        engine.mode = "train"
        engine.update(0)
        model(TOK).sum().backward()
        assert not engine.graph_cut
        engine.detach()
        model.zero_grad(set_to_none=True)


def test_clamp_to_reference_init_is_the_model_at_engine_creation(model: Transformer) -> None:
    snapshot = copy.deepcopy(model)
    with intervene(model, [{"site": "layer0.head0.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}]):
        with torch.no_grad():
            model.blocks[0].attn.qkv.weight.mul_(-1.5)  # training moves the weights on
        got = cache(model, ["layer0.pattern"])["layer0.pattern"]
    init = cache(snapshot, ["layer0.pattern"])["layer0.pattern"]
    now = cache(model, ["layer0.pattern"])["layer0.pattern"]
    assert torch.allclose(got[:, 0], init[:, 0], atol=ATOL)
    assert torch.allclose(got[:, 1:], now[:, 1:], atol=ATOL)
    assert not torch.allclose(init[:, 0], now[:, 0], atol=1e-3)


def test_reference_and_patch_forwards_run_once_per_main_forward(model: Transformer) -> None:
    specs = [
        {"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}},
        {"site": "layer0.resid_mid", "op": {"kind": "clamp_to_reference", "reference": "init"}, "positions": [0]},
        {"site": "layer1.head2.z", "op": {"kind": "clamp_to_reference", "reference": "init"}},
        {"site": "layer1.head0.z", "op": {"kind": "patch", "transform": "resample_batch"}},
        {"site": "layer1.resid_post", "op": {"kind": "patch", "transform": "resample_batch"}, "positions": [1]},
    ]
    counts = {"ref": 0, "main": 0}
    with intervene(model, specs) as engine:
        engine.references["init"].register_forward_pre_hook(lambda *a: counts.__setitem__("ref", counts["ref"] + 1))
        h = model.register_forward_pre_hook(lambda *a: counts.__setitem__("main", counts["main"] + 1))
        for _ in range(3):
            model(TOK)
        h.remove()
    assert counts["ref"] == 3
    assert counts["main"] == 6  # each main forward + exactly one patched forward


def test_patch_shuffle_positions_equals_model_on_shuffled_input(model: Transformer) -> None:
    clean = cache(model, ["layer0.z"])["layer0.z"]
    with intervene(model, [{"site": "layer0.head3.z", "op": {"kind": "patch", "transform": "shuffle_positions"}}]) as engine:
        g = torch.Generator()
        g.set_state(engine.generator.get_state())  # an identically seeded generator
        perm = torch.randperm(T, generator=g)
        got = cache(model, ["layer0.z", "layer0.attn_out"])
    assert not torch.equal(perm, torch.arange(T))
    shuffled = cache(model, ["layer0.z"], TOK[:, perm])["layer0.z"]
    assert torch.allclose(got["layer0.z"][:, 3], shuffled[:, 3], atol=ATOL)
    assert not torch.allclose(shuffled[:, 3], clean[:, 3], atol=1e-3)
    assert torch.allclose(got["layer0.z"][:, :3], clean[:, :3], atol=ATOL)
    expected = clean.clone()
    expected[:, 3] = shuffled[:, 3]
    assert torch.allclose(got["layer0.attn_out"], attn_out_from_z(model, expected), atol=ATOL)


def test_patch_resample_batch_and_random_tokens(model: Transformer) -> None:
    clean = cache(model, ["layer0.resid_post"])["layer0.resid_post"]
    with intervene(model, [{"site": "layer0.resid_post", "op": {"kind": "patch", "transform": "resample_batch"}}]):
        got = cache(model, ["layer0.resid_post"])["layer0.resid_post"]
    shifts = [s for s in range(B) if torch.allclose(got, clean[(torch.arange(B) + s) % B], atol=ATOL)]
    assert len(shifts) == 1 and shifts[0] != 0

    with intervene(model, [{"site": "layer0.resid_post", "op": {"kind": "patch", "transform": "random_tokens"}}]) as engine:
        g = torch.Generator()
        g.set_state(engine.generator.get_state())
        rand = torch.randint(0, int(TOK.max()) + 1, (B, T), generator=g)
        got = cache(model, ["layer0.resid_post"])["layer0.resid_post"]
    assert torch.allclose(got, cache(model, ["layer0.resid_post"], rand)["layer0.resid_post"], atol=ATOL)


# =========================================================================== gradient ops


def test_freeze_whole_site_forward_identical_upstream_grads_zero_or_scaled(model: Transformer) -> None:
    out0, g0 = grads_of(model)
    with intervene(model, [{"site": "layer0.z", "op": {"kind": "freeze"}}]):
        out1, g1 = grads_of(model)
    assert torch.allclose(out1, out0, atol=ATOL)
    assert torch.all(g1["blocks.0.attn.qkv.weight"] == 0) and torch.all(g1["blocks.0.attn.qkv.bias"] == 0)
    assert g0["blocks.0.attn.qkv.weight"].abs().sum() > 0
    for n in ("blocks.0.attn.out.weight", "blocks.1.attn.qkv.weight", "unembed.weight"):  # downstream: unchanged
        assert torch.allclose(g1[n], g0[n], atol=ATOL), n
    with intervene(model, [{"site": "layer0.z", "op": {"kind": "freeze"}, "schedule": {"strength": 0.25}}]):
        _, g2 = grads_of(model)
    assert torch.allclose(g2["blocks.0.attn.qkv.weight"], 0.75 * g0["blocks.0.attn.qkv.weight"], atol=ATOL)


def test_freeze_one_head(model: Transformer) -> None:
    _, g0 = grads_of(model)
    with intervene(model, [{"site": "layer0.head1.z", "op": {"kind": "freeze"}}]):
        _, g1 = grads_of(model)
    w0, w1 = g0["blocks.0.attn.qkv.weight"], g1["blocks.0.attn.qkv.weight"]
    assert torch.all(w1[qkv_rows(1)] == 0)
    others = [r for h in (0, 2, 3) for r in qkv_rows(h)]
    assert torch.allclose(w1[others], w0[others], atol=ATOL)


def test_grad_only_one_head(model: Transformer) -> None:
    out0, g0 = grads_of(model)
    site_grad: dict[str, torch.Tensor] = {}

    def capture(x: torch.Tensor, _site: Site) -> None:  # attached before the engine: sees the site's input
        x.register_hook(lambda g: site_grad.__setitem__("z", g))

    remove = model.site("layer0.z").add_hook(capture)
    try:
        with intervene(model, [{"site": "layer0.head2.z", "op": {"kind": "grad_only"}}]):
            out1, g1 = grads_of(model)
    finally:
        remove()
    assert torch.allclose(out1, out0, atol=ATOL)
    gz = site_grad["z"]
    assert torch.all(gz[:, [0, 1, 3]] == 0) and gz[:, 2].abs().sum() > 0
    w0, w1 = g0["blocks.0.attn.qkv.weight"], g1["blocks.0.attn.qkv.weight"]
    others = [r for h in (0, 1, 3) for r in qkv_rows(h)]
    assert torch.all(w1[others] == 0)
    assert torch.allclose(w1[qkv_rows(2)], w0[qkv_rows(2)], atol=ATOL)
    with intervene(model, [{"site": "layer0.head2.z", "op": {"kind": "grad_only"}, "schedule": {"strength": 0.5}}]):
        _, g2 = grads_of(model)
    assert torch.allclose(g2["blocks.0.attn.qkv.weight"][others], 0.5 * w0[others], atol=ATOL)
    assert torch.allclose(g2["blocks.0.attn.qkv.weight"][qkv_rows(2)], w0[qkv_rows(2)], atol=ATOL)


def test_grad_only_on_every_head_keeps_every_gradient(model: Transformer) -> None:
    _, g0 = grads_of(model)
    with intervene(model, [{"site": "layer0.head*.z", "op": {"kind": "grad_only"}}]):
        _, g1 = grads_of(model)
    for n in g0:
        assert torch.allclose(g1[n], g0[n], atol=ATOL), n
    with intervene(model, [{"site": "layer0.head*.z", "op": {"kind": "grad_only"}, "positions": [0]}]):
        _, g2 = grads_of(model)
    assert g2["blocks.0.attn.qkv.weight"].abs().sum() > 0  # position 0 of every head still learns


@pytest.mark.parametrize("kind", ["freeze", "grad_only", "zero", "mean", "constant", "scale"])
def test_ops_on_attention_scores_keep_the_causal_mask(model: Transformer, kind: str) -> None:
    op = {"kind": kind, **({"k": 0.0} if kind == "scale" else {}), **({"value": 0.0} if kind == "constant" else {})}
    clean = cache(model, ["layer0.pattern"])["layer0.pattern"]
    with intervene(model, [{"site": "layer0.head1.attn_scores", "op": op}]):
        out, g = grads_of(model)
        pat = cache(model, ["layer0.pattern"])["layer0.pattern"]
    assert torch.isfinite(out).all() and all(torch.isfinite(v).all() for v in g.values())
    assert torch.all(pat.triu(1) == 0)  # still causal
    if kind in ("zero", "constant", "scale"):  # equal scores: uniform causal attention on head 1
        uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
        assert torch.allclose(pat[:, 1], uniform.expand(B, T, T), atol=ATOL)
    if kind in ("freeze", "grad_only"):
        assert torch.allclose(pat, clean, atol=ATOL)


# =========================================================================== composition


def test_composition_applies_in_list_order(model: Transformer) -> None:
    x = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]
    noise = {"site": "layer0.resid_mid", "op": {"kind": "noise", "std": 0.3}}
    scale = {"site": "layer0.resid_mid", "op": {"kind": "scale", "k": 2.0}}
    with intervene(model, [noise]):
        n = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"] - x
    with intervene(model, [scale, noise]):
        scale_then_noise = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]
    with intervene(model, [noise, scale]):
        noise_then_scale = cache(model, ["layer0.resid_mid"])["layer0.resid_mid"]
    assert torch.allclose(scale_then_noise, 2 * x + n, atol=ATOL)
    assert torch.allclose(noise_then_scale, 2 * (x + n), atol=ATOL)


def test_composition_constant_and_scale_on_heads(model: Transformer) -> None:
    z = cache(model, ["layer0.z"])["layer0.z"]
    const = {"site": "layer0.head1.z", "op": {"kind": "constant", "value": 1.0}}
    scale1 = {"site": "layer0.head1.z", "op": {"kind": "scale", "k": 3.0}}
    scale2 = {"site": "layer0.head2.z", "op": {"kind": "scale", "k": 3.0}}
    with intervene(model, [const, scale1]):
        a = cache(model, ["layer0.z"])["layer0.z"]
    with intervene(model, [scale1, const]):
        b = cache(model, ["layer0.z"])["layer0.z"]
    with intervene(model, [scale2, const]):
        c = cache(model, ["layer0.z"])["layer0.z"]
    assert torch.allclose(a[:, 1], torch.full_like(z[:, 1], 3.0))
    assert torch.allclose(b[:, 1], torch.ones_like(z[:, 1]))
    assert torch.allclose(c[:, 1], torch.ones_like(z[:, 1])) and torch.allclose(c[:, 2], 3 * z[:, 2], atol=ATOL)
    assert torch.allclose(c[:, [0, 3]], z[:, [0, 3]], atol=ATOL)


# =========================================================================== errors


def test_unknown_site_lists_valid_sites(model: Transformer) -> None:
    with pytest.raises(KeyError) as e:
        InterventionEngine(model, [{"site": "layer9.z", "op": {"kind": "zero"}}])
    assert "layer9.z" in str(e.value) and "layer0.resid_pre" in str(e.value) and "layer1.pattern" in str(e.value)
    with pytest.raises(ValueError, match=r"head 7 out of range"):
        InterventionEngine(model, [{"site": "layer0.head7.z", "op": {"kind": "zero"}}])


def test_unknown_op_kind_and_param(model: Transformer) -> None:
    with pytest.raises(ValueError) as e:
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zap"}}])
    assert "'zap'" in str(e.value) and all(k in str(e.value) for k in ("zero", "clamp_to_reference", "grad_only", "patch"))
    with pytest.raises(ValueError) as e:
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "scale", "gain": 2}}])
    assert "gain" in str(e.value) and "'k'" in str(e.value)
    with pytest.raises(ValueError, match="unknown key"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "heads": [1]}])
    with pytest.raises(ValueError, match="during"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "during": ["test"]}])
    with pytest.raises(FileNotFoundError):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "constant", "value": "/nonexistent/v.npy"}}])


def test_constant_shape_mismatch_fails_at_setup_naming_intervention_site_and_shapes(model: Transformer) -> None:
    with pytest.raises(ValueError) as e:  # shapes are known when the intervention is bound: no forward needed
        InterventionEngine(model, [{"site": "layer0.resid_mid", "op": {"kind": "constant", "value": [1.0] * 7}, "name": "c7"}])
    msg = str(e.value)
    assert "intervention 0 (c7)" in msg and "layer0.resid_mid" in msg and "[8, 32]" in msg and "[7]" in msg
    with pytest.raises(ValueError) as e:
        InterventionEngine(model, [{"site": "layer0.head1.pattern", "op": {"kind": "constant", "value": torch.zeros(H, T, T).tolist()}}])
    msg = str(e.value)
    assert "layer0.pattern" in msg and "head 1" in msg and "[8, 8]" in msg and "[4, 8, 8]" in msg
    # a value that only broadcasts *jointly* with the site (it would change the activation's shape) is refused
    short = TOK[:, :1]
    with intervene(model, [{"site": "layer0.resid_mid", "op": {"kind": "constant", "value": torch.zeros(T, D).tolist()}}]):
        with pytest.raises(ValueError, match=r"\[1, 32\]"):
            model(short)


@pytest.mark.parametrize(
    ("overrides", "param"),
    [({"d_model": 48}, "W_E.weight"), ({"n_heads": 2, "d_head": 8}, "blocks.0.attn.qkv.weight"), ({"n_layers": 3}, "blocks.2.")],
)
def test_reference_from_a_different_architecture_names_the_parameter(model: Transformer, tmp_path, overrides, param) -> None:
    other = make_model(1, **overrides)
    ckpt = _save_ckpt(other, tmp_path / "other.ckpt", "lightning")
    with pytest.raises(ValueError) as e:
        with intervene(model, [{"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": ckpt}}]):
            pass
    assert param in str(e.value) and "ref" in str(e.value)
    assert no_site_active(model)


def test_conflicting_replacements_rejected_disjoint_ones_accepted(model: Transformer) -> None:
    zero = {"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"start": 0, "stop": 100}}

    def other(**kw):
        d = {"site": "layer0.head1.z", "op": {"kind": "constant", "value": 1.0}, "schedule": {"start": 50, "stop": 200}}
        d.update(kw)
        return d

    with pytest.raises(ValueError, match="conflicting"):
        InterventionEngine(model, [zero, other()])
    with pytest.raises(ValueError, match="conflicting"):
        InterventionEngine(model, [zero, other(site="layer0.z")])  # whole site overlaps head 1
    with pytest.raises(ValueError, match="conflicting"):
        InterventionEngine(model, [zero, other(schedule={"start": 99})])  # open-ended
    with pytest.raises(ValueError, match="conflicting"):
        InterventionEngine(model, [zero, other(op={"kind": "resample"}, positions=[1, 2])])
    # accepted: disjoint windows, heads, positions, features, modes, or a non-replacing op
    InterventionEngine(model, [zero, other(schedule={"start": 100, "stop": 200})])
    InterventionEngine(model, [zero, other(site="layer0.head2.z")])
    InterventionEngine(model, [{**zero, "positions": [0, 1]}, other(positions=[2, 3])])
    InterventionEngine(model, [{**zero, "features": [0]}, other(features=[1])])
    InterventionEngine(model, [{**zero, "during": ["train"]}, other(during=["val"])])
    InterventionEngine(model, [zero, other(op={"kind": "scale", "k": 2.0})])
    with pytest.raises(ValueError, match="unique"):
        InterventionEngine(model, [zero, {**zero, "schedule": {"start": 100}}])


def test_positions_features_and_schedule_validation(model: Transformer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "positions": [T]}])
    with pytest.raises(ValueError, match="out of range"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "positions": [-T - 1]}])
    InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "positions": [-T, T - 1]}])
    with pytest.raises(ValueError, match="out of range"):
        InterventionEngine(model, [{"site": "layer0.resid_mid", "op": {"kind": "zero"}, "features": [D]}])
    with pytest.raises(ValueError, match=r"stop=12"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"start": 10, "stop": 12, "ramp": 5}}])
    with pytest.raises(ValueError, match="strength"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": Schedule(strength=2.0)}])
    with pytest.raises(ValueError, match="std"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "noise", "std": -1.0}}])
    with pytest.raises(ValueError, match="over"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "mean", "over": "pos"}}])
    with pytest.raises(ValueError, match="transform"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "patch", "transform": "reverse"}}])
    with pytest.raises(ValueError, match="fn"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "construct"}}])


# =========================================================================== idle / detach / lifecycle


def test_idle_engine_attaches_nothing_and_is_bit_identical(model: Transformer) -> None:
    with torch.no_grad():
        plain = model(TOK)
    specs = [
        {"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}, "schedule": {"start": 100}},
        {"site": "layer0.z", "op": {"kind": "patch", "transform": "resample_batch"}, "schedule": {"start": 100}},
        {"site": "layer1.head2.z", "op": {"kind": "zero"}, "schedule": {"start": 100, "stop": 200}},
        {"site": "layer1.resid_post", "op": {"kind": "noise"}, "schedule": {"windows": [{"start": 100, "stop": 110}]}},
    ]
    engine = InterventionEngine(model, specs)
    engine.load_references()
    engine.set_mode("train")
    for step in (0, 99):
        engine.update(step)
        assert no_site_active(model) and not model._forward_pre_hooks
        with torch.no_grad():
            assert torch.equal(model(TOK), plain)
    engine.update(100)
    assert model.site("layer0.pattern").active and model.site("layer1.z").active and model._forward_pre_hooks
    with torch.no_grad():
        assert not torch.allclose(model(TOK), plain, atol=1e-3)
    engine.update(250)  # only the open-ended ones remain
    assert not model.site("layer1.z").active and model.site("layer0.z").active
    engine.detach()
    assert no_site_active(model) and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(TOK), plain)


def test_during_modes(model: Transformer) -> None:
    engine = InterventionEngine(model, [{"site": "layer0.head0.z", "op": {"kind": "zero"}, "during": ["train"]}])
    engine.set_mode("train")
    engine.update(0)
    assert model.site("layer0.z").active
    engine.set_mode("val")
    assert no_site_active(model)
    engine.set_mode("analysis")
    assert no_site_active(model)
    engine.set_mode("train")
    assert model.site("layer0.z").active
    engine.detach()
    with pytest.raises(ValueError, match="mode"):
        engine.set_mode("test")


def test_intervene_context_manager_removes_hooks(model: Transformer) -> None:
    with torch.no_grad():
        plain = model(TOK)
    specs = [{"site": "layer0.head1.z", "op": {"kind": "zero"}}, {"site": "layer1.resid_pre", "op": {"kind": "patch"}}]
    with intervene(model, specs):
        assert model.site("layer0.z").active and model.site("layer1.resid_pre").active
    assert no_site_active(model) and not model._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, specs):
            raise RuntimeError("boom")
    assert no_site_active(model) and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(TOK), plain)


def test_reference_with_same_shapes_but_other_head_split_is_refused(tmp_path) -> None:  # noqa: ANN001
    """4 heads x 8 dims and 8 heads x 4 dims have identical weight shapes; the checkpoint's hparams tell them apart."""
    from clamp.interventions.engine import InterventionEngine
    from clamp.training import TrainingModule
    from synthetic_data.base import TaskSpec

    spec = TaskSpec(d_vocab=16, n_ctx=8)
    ours = TrainingModule(TransformerConfig(n_layers=1, n_heads=4, d_model=32), task=spec)
    other = TrainingModule(TransformerConfig(n_layers=1, n_heads=8, d_model=32), task=spec)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, path)
    engine = InterventionEngine(ours.model, [{"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(path)}}])
    with pytest.raises(ValueError, match="n_heads=8 in the reference vs 4 in the model"):
        engine.load_references()
    same = tmp_path / "same.ckpt"
    torch.save({"state_dict": ours.state_dict(), "hyper_parameters": dict(ours.hparams)}, same)
    InterventionEngine(ours.model, [{"site": "layer0.z", "op": {"kind": "clamp_to_reference", "reference": str(same)}}]).load_references()


def test_all_heads_selector_is_one_pass_and_equals_whole_site(monkeypatch: pytest.MonkeyPatch) -> None:
    from clamp.interventions import ops

    torch.manual_seed(0)
    m = Transformer(TransformerConfig(n_layers=2, n_heads=4, d_model=32).resolved(d_vocab=16, n_ctx=8))
    tokens = torch.randint(0, 16, (3, 8))
    calls: list[object] = []
    original = ops.Scale.apply

    def counting(self, x, mask, ctx):  # noqa: ANN001, ANN202
        calls.append(ctx.head)
        return original(self, x, mask, ctx)

    monkeypatch.setattr(ops.Scale, "apply", counting)
    with intervene(m, [{"site": "layer0.head*.z", "op": {"kind": "scale", "k": 0.5}}]):
        per_head = m(tokens)
    assert calls == [(0, 1, 2, 3)]
    with intervene(m, [{"site": "layer0.z", "op": {"kind": "scale", "k": 0.5}}]):
        whole = m(tokens)
    torch.testing.assert_close(per_head, whole)


def test_ramp_out_without_stop_is_an_error() -> None:
    from clamp.interventions.schedules import Schedule

    with pytest.raises(ValueError, match="ramp_out=5 needs a `stop`"):
        Schedule(ramp_out=5).validate()
