"""The paper's clamps (Singh et al. 2024) and the mechanism behind them: batch-aware values,
cross-site reads, second passes of the current model, per-intervention gradient control and
head-set selectors.

Inputs are hand-built ``x1 l1 x2 l2 xq`` sequences; expected values come from plain forwards and
raw site hooks (``model.hooks``), never from the engine's own code path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from clamp.interventions import InterventionEngine, intervene
from models import Transformer, TransformerConfig

C = "clamp.interventions.constructors."
N_LABELS, DIM, H, D = 5, 8, 4, 16
DH = D // H
ATOL = 1e-5
CLAMPS = Path(__file__).resolve().parents[1] / "experiments" / "singh2024" / "clamps"


def make_model(seed: int = 0, n_heads: int = H) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(n_layers=2, n_heads=n_heads, d_model=D).resolved(d_vocab=N_LABELS + 1, n_ctx=5, d_feature=DIM, d_out=N_LABELS)
    m = Transformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # sharp, non-trivial patterns and biases
    return m


def hand_batch() -> dict[str, torch.Tensor]:
    """Three sequences: query matches the first pair, the second pair, and (third) neither."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[5, 2, 5, 4, 5], [5, 0, 5, 3, 5], [5, 1, 5, 4, 5]])
    feature_mask = torch.tensor([[True, False, True, False, True]] * 3)
    features = torch.randn(3, 5, DIM, generator=g) * feature_mask[..., None]
    features[0, 4] = features[0, 0]  # the query is the first exemplar
    features[1, 4] = features[1, 2]  # the query is the second exemplar
    return {
        "tokens": tokens,
        "features": features,
        "feature_mask": feature_mask,
        "query_pos": torch.tensor([4, 4, 4]),
        "match_pos": torch.tensor([1, 3, -1]),
        "targets": torch.tensor([[0, 0, 0, 0, 2], [0, 0, 0, 0, 3], [0, 0, 0, 0, 1]]),
        "loss_mask": torch.tensor([[False] * 4 + [True]] * 3),
    }


BATCH = hand_batch()
INPUTS = (BATCH["tokens"], BATCH["features"], BATCH["feature_mask"])


def run(model: Transformer, names: list[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.run_with_cache(*INPUTS, names=names)[1]


def grads(model: Transformer) -> dict[str, torch.Tensor]:
    """Gradients of the query cross-entropy (the paper's loss), zeros where none arrived."""
    model.zero_grad(set_to_none=True)
    logits = model(*INPUTS)
    F.cross_entropy(logits[:, -1], BATCH["targets"][:, -1]).backward()
    g = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g


def qk_rows(head: int, which: str, n_heads: int = H) -> list[int]:
    """Rows of a layer's fused qkv weight for one head's q, k or v."""
    i = "qkv".index(which)
    dh = D // n_heads
    return [i * n_heads * dh + head * dh + d for d in range(dh)]


def config_interventions(name: str) -> list[dict]:
    return yaml.safe_load((CLAMPS / f"{name}.yaml").read_text())["trainer"]["callbacks+"][0]["init_args"]["interventions"]


def shifted_embeddings_hooks(model: Transformer, names: list[str]) -> dict[str, torch.Tensor]:
    """Independent computation of the paper's second pass: L0's output := embeddings shifted by one."""
    seen: dict[str, torch.Tensor] = {}

    def keep_embed(x, _site):
        seen["e"] = x

    def shift(x, _site):
        e = seen["e"]
        out = e.clone()
        out[:, 1:-1] = e[:, :-2]
        return out

    out: dict[str, torch.Tensor] = {}

    def make(n):
        def rec(x, _site):
            out[n] = x.detach()

        return rec

    with torch.no_grad(), model.hooks([("layer0.resid_pre", keep_embed), ("layer0.resid_post", shift), *[(n, make(n)) for n in names]]):
        model(*INPUTS)
    return out


# =========================================================================== selectors


def test_head_set_selector_zeroes_exactly_those_heads() -> None:
    model = make_model()
    clean = run(model, ["layer1.z"])["layer1.z"]
    with intervene(model, [{"site": "layer1.head[1-2].z", "op": {"kind": "zero"}}]):
        a = run(model, ["layer1.z"])["layer1.z"]
    with intervene(model, [{"site": "layer1.head[1,2].z", "op": {"kind": "zero"}}]):
        b = run(model, ["layer1.z"])["layer1.z"]
    assert torch.equal(a, b)
    assert torch.all(a[:, 1:3] == 0) and torch.allclose(a[:, [0, 3]], clean[:, [0, 3]], atol=ATOL)
    assert [h for _, h in model.resolve_sites("layer0.head[0,3].pattern")] == [0, 3]
    with pytest.raises(ValueError, match=r"head 4 out of range; valid heads are 0\.\.3"):
        InterventionEngine(model, [{"site": "layer1.head[2-4].z", "op": {"kind": "zero"}}])
    with pytest.raises(ValueError, match=r"bad head set '\[a\]'"):
        InterventionEngine(model, [{"site": "layer1.head[a].z", "op": {"kind": "zero"}}])


def test_single_head_ablation_trains_only_the_kept_head() -> None:
    model = make_model()
    with intervene(model, [{"site": "layer1.head[1-3].z", "op": {"kind": "zero"}}]):
        g = grads(model)
        z = run(model, ["layer1.z"])["layer1.z"]
    assert torch.all(z[:, 1:] == 0) and z[:, 0].abs().sum() > 0
    qkv, out = g["blocks.1.attn.qkv.weight"], g["blocks.1.attn.out.weight"]
    for h in (1, 2, 3):
        assert torch.all(qkv[qk_rows(h, "q") + qk_rows(h, "k") + qk_rows(h, "v")] == 0)
        assert torch.all(out[:, h * DH : (h + 1) * DH] == 0)
    assert qkv[qk_rows(0, "q")].abs().sum() > 0 and qkv[qk_rows(0, "v")].abs().sum() > 0


# =========================================================================== batch-aware values


@pytest.mark.parametrize("strength", [1.0, 0.8])
def test_induction_pattern_puts_strength_on_the_matching_label(strength: float) -> None:
    model = make_model()
    clean = run(model, ["layer1.pattern"])["layer1.pattern"]
    spec = {"site": "layer1.head2.pattern", "positions": [-1], "op": {"kind": "construct", "fn": C + "induction_pattern", "kwargs": {"strength": strength}}}
    with intervene(model, [spec], batch=BATCH):
        got = run(model, ["layer1.pattern", "layer1.z"])
    s = strength
    expected = torch.tensor([[0, s, 0, 1 - s, 0], [0, 1 - s, 0, s, 0], [0, 0.5, 0, 0.5, 0]])
    p = got["layer1.pattern"]
    assert torch.allclose(p[:, 2, -1], expected, atol=ATOL)
    assert torch.allclose(p[:, 2, :-1], clean[:, 2, :-1], atol=ATOL)  # other rows untouched
    assert torch.allclose(p[:, [0, 1, 3]], clean[:, [0, 1, 3]], atol=ATOL)  # other heads untouched
    v = run(model, ["layer1.v"])["layer1.v"]
    assert torch.allclose(got["layer1.z"][:, 2, -1], torch.einsum("bk,bkd->bd", expected, v[:, 2]), atol=ATOL)


def test_previous_token_pattern_strength() -> None:
    model = make_model()
    spec = {"site": "layer0.head1.pattern", "op": {"kind": "construct", "fn": C + "previous_token_pattern", "kwargs": {"strength": 0.75}}}
    with intervene(model, [spec]):
        p = run(model, ["layer0.pattern"])["layer0.pattern"][:, 1]
    want = torch.tensor([[1, 0, 0, 0, 0], [0.75, 0.25, 0, 0, 0], [0, 0.75, 0.25, 0, 0], [0, 0, 0.75, 0.25, 0], [0, 0, 0, 0.75, 0.25]])
    assert torch.allclose(p, want.expand_as(p), atol=ATOL)


def test_batch_aware_value_errors_name_what_is_missing() -> None:
    model = make_model()
    spec = {"site": "layer1.head0.pattern", "positions": [-1], "op": {"kind": "construct", "fn": C + "induction_pattern"}}
    with intervene(model, [spec]), pytest.raises(ValueError, match=r"need the batch \(fields \['feature_mask', 'match_pos', 'query_pos'\]\).*batch=batch"):
        run(model, ["logits"])
    partial = {k: v for k, v in BATCH.items() if k != "match_pos"}
    with intervene(model, [spec], batch=partial), pytest.raises(ValueError, match=r"need batch field\(s\) \['match_pos'\]"):
        run(model, ["logits"])
    with intervene(model, [spec], batch={**BATCH, "tokens": BATCH["tokens"][:2]}), pytest.raises(ValueError, match=r"tokens of shape \[2, 5\].*\[3, 5\]"):
        run(model, ["logits"])


# =========================================================================== cross-site values


def test_perfect_copy_logits_are_the_heads_scores_and_train_only_its_qk() -> None:
    model = make_model()
    clean = run(model, ["layer1.attn_scores", "logits"])
    spec = {"site": "logits", "positions": [-1], "grad": True, "op": {"kind": "construct", "fn": C + "perfect_copy", "kwargs": {"head": 1}}}
    with intervene(model, [spec], batch=BATCH):
        got = run(model, ["logits"])["logits"]
        g = grads(model)
    scores = clean["layer1.attn_scores"][:, 1, -1]  # [B, k_pos]
    for b in range(3):
        want = torch.full((N_LABELS,), -1e4)
        want[BATCH["tokens"][b, 1]] = scores[b, 1]
        want[BATCH["tokens"][b, 3]] = scores[b, 3]
        assert torch.allclose(got[b, -1], want, atol=ATOL), b
    assert torch.allclose(got[:, :-1], clean["logits"][:, :-1], atol=ATOL)  # only the query row
    # softmax over the logits == the head's attention over the two context labels
    p = clean["layer1.attn_scores"][0, 1, -1, [1, 3]].softmax(-1)
    assert torch.allclose(got[0, -1].softmax(-1)[[2, 4]], p, atol=ATOL)

    qkv = g["blocks.1.attn.qkv.weight"]
    assert qkv[qk_rows(1, "q")].abs().sum() > 0 and qkv[qk_rows(1, "k")].abs().sum() > 0
    others = [r for h in (0, 2, 3) for w in "qk" for r in qk_rows(h, w)] + [r for h in range(H) for r in qk_rows(h, "v")]
    assert torch.all(qkv[others] == 0)
    for n in ("blocks.1.attn.out.weight", "unembed.weight", "unembed.bias", "ln_final.weight"):
        assert torch.all(g[n] == 0), n
    assert g["blocks.0.attn.qkv.weight"].abs().sum() > 0 and g["feature_in.weight"].abs().sum() > 0  # layer 0 learns through the keys

    with intervene(model, [{**spec, "grad": False}], batch=BATCH):  # a constant: nothing learns from the query loss
        g0 = grads(model)
    assert all(torch.all(v == 0) for v in g0.values())


def test_perfect_copy_repeated_label_gets_the_log_sum_exp_of_its_positions() -> None:
    model = make_model()
    batch = {**BATCH, "tokens": torch.tensor([[5, 2, 5, 2, 5]] * 3)}
    inputs = (batch["tokens"], batch["features"], batch["feature_mask"])
    spec = {"site": "logits", "positions": [-1], "op": {"kind": "construct", "fn": C + "perfect_copy", "kwargs": {"head": 0}}}
    with torch.no_grad():
        scores = model.run_with_cache(*inputs, names=["layer1.attn_scores"])[1]["layer1.attn_scores"][:, 0, -1]
        with intervene(model, [spec], batch=batch):
            got = model(*inputs)[:, -1]
    assert torch.allclose(got[:, 2], torch.logsumexp(scores[:, [1, 3]], -1), atol=ATOL)
    assert torch.all(got[:, [0, 1, 3, 4]] == -1e4)


def test_reading_a_later_site_is_an_error_naming_it() -> None:
    model = make_model()
    spec = {"site": "layer0.resid_post", "op": {"kind": "construct", "fn": C + "site_value", "kwargs": {"source": "layer1.attn_out"}}}
    with pytest.raises(ValueError, match=r"intervention 0 \(layer0.resid_post:construct\): reads site 'layer1.attn_out', which comes after its target 'layer0.resid_post'.*read_from"):
        InterventionEngine(model, [spec])
    with pytest.raises(ValueError, match=r"reads unknown site 'layer7.z'"):
        InterventionEngine(model, [{**spec, "op": {**spec["op"], "kwargs": {"source": "layer7.z"}}}])
    # the same read from a second pass is fine: that pass has run completely
    InterventionEngine(model, [{**spec, "op": {**spec["op"], "read_from": {"transform": "identity"}}}])

    def sneaky(x, ctx):  # reads a site it did not declare
        return ctx.read("embed")

    with intervene(model, [{"site": "layer1.resid_post", "op": {"kind": "construct", "fn": sneaky, "reads": ["layer0.resid_pre"]}}]):
        with pytest.raises(ValueError, match=r"reads site 'embed', which it did not declare \(declared: \['layer0.resid_pre'\]\)"):
            run(model, ["logits"])


# =========================================================================== second passes


def test_layer1_clamp_values_and_gradients() -> None:
    model = make_model()
    clean = run(model, ["layer0.resid_pre"])
    hand = shifted_embeddings_hooks(model, ["layer1.pattern"])
    specs = config_interventions("layer1")[:2]
    with intervene(model, specs, batch=BATCH):
        got = run(model, ["layer0.resid_post", "layer1.pattern"])
        g = grads(model)
    assert torch.allclose(got["layer0.resid_post"], clean["layer0.resid_pre"], atol=ATOL)  # L0's output := E
    assert torch.allclose(got["layer1.pattern"], hand["layer1.pattern"], atol=ATOL)  # patterns of the shifted pass
    assert not torch.allclose(hand["layer1.pattern"], run(model, ["layer1.pattern"])["layer1.pattern"], atol=1e-3)
    for n in ("blocks.0.attn.qkv.weight", "blocks.0.attn.out.weight", "blocks.0.ln1.weight"):
        assert torch.all(g[n] == 0), n  # layer 0 is replaced in both passes
    qkv = g["blocks.1.attn.qkv.weight"]
    assert qkv[qk_rows(0, "q")].abs().sum() > 0 and qkv[qk_rows(0, "v")].abs().sum() > 0  # match and copy learn
    assert g["feature_in.weight"].abs().sum() > 0

    nograd = [dict(s, grad=False) if s["op"]["kind"] == "patch" else s for s in specs]
    with intervene(model, nograd, batch=BATCH):
        g2 = grads(model)
    assert torch.all(g2["blocks.1.attn.qkv.weight"][[r for h in range(H) for w in "qk" for r in qk_rows(h, w)]] == 0)
    assert g2["blocks.1.attn.qkv.weight"][qk_rows(0, "v")].abs().sum() > 0


def test_layer1_plus_copy_reads_scores_from_the_shifted_pass() -> None:
    model = make_model()
    hand = shifted_embeddings_hooks(model, ["layer1.attn_scores"])["layer1.attn_scores"][:, 0, -1]
    specs = config_interventions("layer1_copy")
    with intervene(model, specs, batch=BATCH):
        got = run(model, ["logits"])["logits"][:, -1]
        g = grads(model)
    for b in range(3):
        assert torch.allclose(got[b, BATCH["tokens"][b, [1, 3]]], hand[b, [1, 3]], atol=ATOL)
    assert torch.all(g["blocks.0.attn.qkv.weight"] == 0) and torch.all(g["unembed.weight"] == 0)
    qkv = g["blocks.1.attn.qkv.weight"]
    assert qkv[qk_rows(0, "q")].abs().sum() > 0 and qkv[qk_rows(0, "k")].abs().sum() > 0
    assert torch.all(qkv[[r for h in range(H) for r in qk_rows(h, "v")]] == 0)


def test_preserve_patterns_and_values_path_ablations() -> None:
    model = make_model()
    clean = run(model, ["layer1.pattern", "layer1.v", "layer1.z"])
    ablate_l0 = {"site": "layer0.head*.z", "op": {"kind": "zero"}}
    with intervene(model, [ablate_l0]):
        ablated = run(model, ["layer1.pattern", "layer1.v"])
    keep_patterns = {"site": "layer1.pattern", "op": {"kind": "patch", "transform": "identity"}}
    with intervene(model, [ablate_l0, keep_patterns]):
        got = run(model, ["layer1.pattern", "layer1.v", "layer1.z"])
    assert torch.allclose(got["layer1.pattern"], clean["layer1.pattern"], atol=ATOL)
    assert torch.allclose(got["layer1.v"], ablated["layer1.v"], atol=ATOL)
    assert not torch.allclose(got["layer1.z"], clean["layer1.z"], atol=1e-3)
    keep_values = {"site": "layer1.v", "op": {"kind": "patch", "transform": "identity"}}
    with intervene(model, [ablate_l0, keep_values]):
        got = run(model, ["layer1.pattern", "layer1.v"])
    assert torch.allclose(got["layer1.v"], clean["layer1.v"], atol=ATOL)
    assert torch.allclose(got["layer1.pattern"], ablated["layer1.pattern"], atol=ATOL)


def test_nested_second_pass_interventions_are_validated_with_their_path() -> None:
    model = make_model()
    bad = {"site": "layer1.pattern", "op": {"kind": "patch", "transform": "identity", "interventions": [{"site": "layer0.nope", "op": {"kind": "zero"}}]}}
    with pytest.raises(KeyError, match=r"intervention 0 \(layer1.pattern:patch\)\.op\.interventions\[0\] \(layer0.nope:zero\): site selector 'layer0.nope' matches no site"):
        InterventionEngine(model, [bad])
    sched = {"site": "layer1.pattern", "op": {"kind": "patch", "transform": "identity", "interventions": [{"site": "layer0.z", "op": {"kind": "zero"}, "schedule": {"start": 5}}]}}
    with pytest.raises(ValueError, match=r"give `schedule` and `during` to the outer intervention"):
        InterventionEngine(model, [sched])
    batchy = {"site": "layer1.pattern", "op": {"kind": "patch", "transform": "resample_batch", "interventions": [
        {"site": "layer1.head0.pattern", "op": {"kind": "construct", "fn": C + "induction_pattern"}}]}}
    with pytest.raises(ValueError, match=r"transforms the input \('resample_batch'\).*transform: identity"):
        InterventionEngine(model, [batchy])


# =========================================================================== gradient control


def test_grad_flag_is_validated_against_the_op() -> None:
    model = make_model()
    for op, msg in [
        ({"kind": "zero"}, r"grad: true has no effect on a `zero` value"),
        ({"kind": "clamp_to_reference", "reference": "init"}, r"grad: true has no effect on a `clamp_to_reference` value"),
        ({"kind": "scale", "k": 2.0}, r"`scale` keeps the activation's own gradient"),
    ]:
        with pytest.raises(ValueError, match=msg):
            InterventionEngine(model, [{"site": "layer0.z", "op": op, "grad": True}])
    with pytest.raises(ValueError, match=r"grad must be true or false, got 'yes'"):
        InterventionEngine(model, [{"site": "layer0.z", "op": {"kind": "mean"}, "grad": "yes"}])


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_grad_true_lets_value_ops_train_what_produced_the_value(kind: str) -> None:
    model = make_model()
    spec = {"site": "layer0.resid_post", "op": {"kind": kind}}
    with intervene(model, [spec]):
        g0 = grads(model)
    with intervene(model, [{**spec, "grad": True}]):
        g1 = grads(model)
    assert torch.all(g0["blocks.0.attn.qkv.weight"] == 0) and torch.all(g0["feature_in.weight"] == 0)
    assert g1["blocks.0.attn.qkv.weight"].abs().sum() > 0 and g1["feature_in.weight"].abs().sum() > 0
    assert torch.allclose(g0["unembed.weight"], g1["unembed.weight"], atol=ATOL)  # downstream: same


def test_graft_from_checkpoint_replaces_l0_output_and_stops_its_gradient(tmp_path) -> None:
    model, trained = make_model(0), make_model(1)
    path = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), path)
    spec = config_interventions("graft")[0]
    spec["op"]["reference"] = str(path)
    with intervene(model, [spec], batch=BATCH):
        got = run(model, ["layer0.resid_post"])["layer0.resid_post"]
        g = grads(model)
    assert torch.allclose(got, run(trained, ["layer0.resid_post"])["layer0.resid_post"], atol=ATOL)
    for n in ("W_E.weight", "feature_in.weight", "blocks.0.attn.qkv.weight"):
        assert torch.all(g[n] == 0), n
    assert g["blocks.1.attn.qkv.weight"].abs().sum() > 0


# =========================================================================== the shipped configs


@pytest.mark.parametrize(("name", "layer", "head"), [("prev_token", 0, 0), ("match", 1, 0)])
def test_constant_pattern_clamps_stop_that_heads_qk_gradient_only(name: str, layer: int, head: int) -> None:
    """A hand-built pattern is a constant: the clamped head's W_Q/W_K learn nothing from the query loss,
    its W_V still does; the single-head ablation leaves L1H1..7 without any gradient."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layers=2, n_heads=8, d_model=D).resolved(d_vocab=N_LABELS + 1, n_ctx=5, d_feature=DIM, d_out=N_LABELS))
    g_free = grads(model)
    with intervene(model, config_interventions(name), batch=BATCH):
        g = grads(model)
    qkv, free = g[f"blocks.{layer}.attn.qkv.weight"], g_free[f"blocks.{layer}.attn.qkv.weight"]
    rows = qk_rows(head, "q", 8) + qk_rows(head, "k", 8)
    assert torch.all(qkv[rows] == 0) and free[rows].abs().sum() > 0
    assert qkv[qk_rows(head, "v", 8)].abs().sum() > 0
    l1 = g["blocks.1.attn.qkv.weight"]
    assert torch.all(l1[[r for h in range(1, 8) for w in "qkv" for r in qk_rows(h, w, 8)]] == 0)
    if name == "match":
        assert torch.all(l1[qk_rows(0, "q", 8) + qk_rows(0, "k", 8)] == 0)


@pytest.mark.parametrize("name", sorted(p.stem for p in CLAMPS.glob("*.yaml")))
def test_every_paper_clamp_config_builds_and_trains_one_step(name: str, tmp_path) -> None:
    """Each YAML's interventions validate against the paper's model (2 layers, 8 heads) and give a
    finite loss whose gradient reaches some parameter."""
    specs = config_interventions(name)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layers=2, n_heads=8, d_model=D).resolved(d_vocab=N_LABELS + 1, n_ctx=5, d_feature=DIM, d_out=N_LABELS))
    for s in specs:
        if s["op"]["kind"] == "clamp_to_reference":
            torch.save(model.state_dict(), tmp_path / "ref.pt")
            s["op"]["reference"] = str(tmp_path / "ref.pt")
    with intervene(model, specs, batch=BATCH, mode="train"):
        loss = F.cross_entropy(model(*INPUTS)[:, -1], BATCH["targets"][:, -1])
        loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not any(s.active for s in model.site_map().values())  # the engine left the model as it was


def test_clamp_callback_feeds_the_batch_to_training_validation_and_probes(tmp_path) -> None:
    """Batch-aware and second-pass clamps through Lightning: the ClampCallback gives each training and
    validation batch to the engine; emergence probes run clamped on their own batch, and a probe
    without the needed fields is skipped (with a warning) rather than crashing the run."""
    from clamp import ClampCallback, EmergenceCallback
    from tests.helpers import bursty_datamodule, tiny_module, trainer

    dm = bursty_datamodule(batch_size=16)
    module = tiny_module(dm)
    specs = [
        {"name": "match", "site": "layer1.head0.pattern", "positions": [-1], "op": {"kind": "construct", "fn": C + "induction_pattern"}},
        {"name": "l1_from_shifted", "site": "layer1.head1.pattern", "grad": True, "op": {"kind": "patch", "transform": "identity", "interventions": [
            {"site": "layer0.resid_post", "grad": True, "op": {"kind": "construct", "fn": C + "shifted"}}]}},
    ]
    emergence = EmergenceCallback(every_n_steps=4, probe_size=32, causal=False, heatmap_every_n_steps=0)
    clamp = ClampCallback(specs)
    with pytest.warns(UserWarning, match=r"probe 'random' skipped while clamps needing batch fields"):
        trainer(tmp_path, 8, [clamp, emergence], val_check_interval=4).fit(module, datamodule=dm)
    assert any(k.startswith("task/query_to_match/L1H0") for k in emergence.history)
    assert not any(k.startswith("random/") for k in emergence.history)
    match = [v for _, v in emergence.history["task/query_to_match/L1H0"]]
    assert all(abs(v - 1.0) < 1e-5 for v in match)  # the clamped head attends to the matching label, in probes too


def test_missing_task_fields_fail_at_setup_naming_them(tmp_path) -> None:
    from clamp import ClampCallback
    from synthetic_data import RepeatedTokens, SyntheticDataModule
    from tests.helpers import tiny_module, trainer

    dm = SyntheticDataModule(RepeatedTokens(vocab_size=8, seq_len=8, min_period=3, max_period=4), batch_size=4, eval_size=8, eval_batch_size=8)
    spec = {"name": "match", "site": "layer1.head0.pattern", "positions": [-1], "op": {"kind": "construct", "fn": C + "induction_pattern"}}
    with pytest.raises(ValueError, match=r"interventions \['match'\] need batch field\(s\) \['feature_mask', 'match_pos', 'query_pos'\], which task RepeatedTokens does not provide"):
        trainer(tmp_path, 2, [ClampCallback([spec])]).fit(tiny_module(dm), datamodule=dm)
