"""Hugging Face adapter: the same sites as models.Transformer, exact when idle, faithful when hooked."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from clamp import intervene
from clamp.metrics import heads
from models.hf import HFModelConfig, HFSiteModel

TINY = {
    "gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 32, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32, "intermediate_size": 64},
    "gpt_neox": {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32, "intermediate_size": 64, "use_parallel_residual": False},
}
VOCAB, CTX = 40, 16


def build(arch: str, **extra) -> HFSiteModel:
    torch.manual_seed(0)
    model = HFModelConfig(arch=arch, config={**TINY[arch], **extra}).build(d_vocab=VOCAB, n_ctx=CTX)
    return model.eval()


def plain_copy(model: HFSiteModel) -> torch.nn.Module:
    """The same weights in an unadapted Hugging Face model (its default SDPA attention)."""
    cfg = copy.deepcopy(model.hf.config)
    plain = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    plain.load_state_dict(model.hf.state_dict())
    return plain.eval()


def tokens(n: int = 3, t: int = CTX) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(1))


ARCHS = sorted(TINY)


@pytest.mark.parametrize("arch", ARCHS)
def test_idle_adapter_is_bit_exact_and_has_every_site(arch: str) -> None:
    model = build(arch)
    x = tokens()
    assert torch.equal(model(x), plain_copy(model)(input_ids=x).logits)
    names = {i.name for i in model.sites()}
    for leaf in ("resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "result", "attn_out", "resid_mid", "mlp_hidden", "mlp_out", "resid_post"):
        assert f"layer1.{leaf}" in names
    assert {"embed", "final_resid", "logits"} <= names
    logits, cache = model.run_with_cache(x)
    for info in model.sites():
        assert tuple(cache[info.name].shape) == info.expected_shape(3, CTX), info.name
    assert torch.allclose(logits, model(x), atol=1e-5)  # explicit attention == fused kernel
    assert torch.equal(cache["logits"], logits)
    assert torch.allclose(cache["layer0.pattern"].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.all(cache["layer0.pattern"].triu(1) == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_head_results_sum_to_the_projection_output(arch: str) -> None:
    model = build(arch)
    proj = model.layout.attn_proj
    real: dict[str, torch.Tensor] = {}
    plain = plain_copy(model)
    attn = getattr(plain.get_decoder().h[1] if arch == "gpt2" else plain.get_decoder().layers[1], model.layout.attn)
    getattr(attn, proj).register_forward_hook(lambda m, a, out: real.__setitem__("out", out))
    x = tokens()
    plain(input_ids=x)
    _, cache = model.run_with_cache(x, names=["layer1.result"])
    bias = getattr(getattr(getattr(model.hf.get_decoder().h[1] if arch == "gpt2" else model.hf.get_decoder().layers[1], model.layout.attn), proj), "bias")
    total = cache["layer1.result"].sum(1) + (0 if bias is None else bias)
    torch.testing.assert_close(total, real["out"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ablating_a_head_equals_a_manual_ablation(arch: str) -> None:
    model = build(arch)
    plain = plain_copy(model)
    d_head = model.cfg.d_head
    layers = plain.get_decoder().h if arch == "gpt2" else plain.get_decoder().layers
    proj = getattr(getattr(layers[0], model.layout.attn), model.layout.attn_proj)

    def zero_head2(module, args):
        z = args[0].clone()
        z[..., 2 * d_head : 3 * d_head] = 0
        return (z,)

    proj.register_forward_pre_hook(zero_head2)
    x = tokens()
    want = plain(input_ids=x).logits
    for site in ("z", "result"):  # z keeps the fused kernel; result recomputes the projection head by head
        with intervene(model, [{"site": f"layer0.head2.{site}", "op": {"kind": "zero"}}]):
            got = model(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, model(x), atol=1e-4)


def test_pattern_clamps_use_eager_attention_and_references_deepcopy() -> None:
    model = build("llama")  # grouped-query attention: k, v are repeated to one per query head
    x = tokens()
    base = model(x)
    # a reference copy of the adapter (deepcopy) must carry its own hooks and sites
    with intervene(model, [{"site": "layer*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}]):
        torch.testing.assert_close(model(x), base, atol=1e-5, rtol=1e-5)
    with intervene(model, [{"site": "layer1.head0.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}}]):
        _, cache = model.run_with_cache(x, names=["layer1.pattern"])
    p = cache["layer1.pattern"][:, 0]
    assert torch.equal(p[:, torch.arange(1, CTX), torch.arange(CTX - 1)], torch.ones(3, CTX - 1))  # every query on its previous token


def test_resid_mid_edit_equals_the_same_edit_on_attn_out() -> None:
    model = build("gpt2")
    x = tokens()
    shift = torch.randn(32, generator=torch.Generator().manual_seed(3))
    add = lambda t, s: t + shift  # noqa: E731
    with model.hooks([("layer0.resid_mid", add)]):
        a = model(x)
    with model.hooks([("layer0.attn_out", add)]):
        b = model(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, model(x), atol=1e-3)


def test_head_scores_run_on_adapters_and_bad_configs_fail_clearly() -> None:
    model = build("llama")
    batch = {"tokens": tokens(), "targets": tokens().roll(-1, 1), "loss_mask": torch.ones(3, CTX, dtype=torch.bool)}
    scores = heads.all_head_scores(model, batch)
    assert scores["prev_token"].shape == scores["copying"].shape == scores["copying_eigen"].shape == (2, 4)
    assert torch.isfinite(scores["copying"]).all() and torch.isfinite(scores["copying_eigen"]).all()
    with pytest.raises(ValueError, match="arch='bert'.*gpt2"):
        HFModelConfig(arch="bert").build(VOCAB, CTX)
    with pytest.raises(ValueError, match="vocab_size is 10"):
        HFModelConfig(arch="gpt2", config={**TINY["gpt2"], "vocab_size": 10}).build(VOCAB, CTX)
    with pytest.raises(ValueError, match="token ids only"):
        model(tokens(), features=torch.zeros(3, CTX, 2))
    with pytest.raises(KeyError, match="layer0.resid_mid"):
        build("gpt_neox", use_parallel_residual=True).site("layer0.resid_mid")


def test_from_pretrained_local_directory(tmp_path) -> None:
    model = build("gpt_neox")
    model.hf.save_pretrained(tmp_path / "m")
    loaded = HFModelConfig(arch="gpt_neox", pretrained=str(tmp_path / "m")).build(VOCAB, CTX).eval()
    assert torch.equal(loaded(tokens()), model(tokens()))
    with pytest.raises(ValueError, match="is a 'gpt_neox' model, but arch='gpt2'"):
        HFModelConfig(arch="gpt2", pretrained=str(tmp_path / "m")).build(VOCAB, CTX)
