"""The transformer: site names and shapes, causal masking, equivalence of the fused and explicit paths, determinism."""

from __future__ import annotations

import pytest
import torch

from models import Transformer, TransformerConfig, UnknownSiteError


def _tokens(b: int = 3, t: int = 10, v: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


def test_site_names_and_shapes(tiny_model: Transformer) -> None:
    names = [s.name for s in tiny_model.sites()]
    for layer in (0, 1):
        for leaf in ("resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "result", "attn_out", "resid_mid", "mlp_hidden", "mlp_out", "resid_post"):
            assert f"layer{layer}.{leaf}" in names
    assert names[0] == "embed" and names[-1] == "logits"
    tokens = _tokens()
    _, cache = tiny_model.run_with_cache(tokens)
    assert set(cache) == set(names)
    for info in tiny_model.sites():
        assert tuple(cache[info.name].shape) == info.expected_shape(3, 10), info.name
    assert cache["layer0.pattern"].shape == (3, 4, 10, 10)
    assert cache["layer1.result"].shape == (3, 4, 10, 32)


def test_attn_only_has_no_mlp_sites() -> None:
    m = Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=8, n_ctx=6))
    names = {s.name for s in m.sites()}
    assert "layer0.mlp_out" not in names and "layer0.resid_mid" not in names and "layer1.resid_post" in names


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
@pytest.mark.parametrize("normalization", ["layernorm", "none"])
def test_hooks_free_forward_equals_cached_and_explicit_attention(positional: str, normalization: str) -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=2, n_heads=4, d_model=32, attn_only=False, positional=positional, normalization=normalization)
    m = Transformer(cfg.resolved(d_vocab=16, n_ctx=12))
    tokens = _tokens()
    plain = m(tokens)
    # reading every site forces the explicit pattern and per-head result paths
    cached, cache = m.run_with_cache(tokens)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    # and after the hooks are removed, the fused path gives bit-identical output again
    assert torch.equal(m(tokens), plain)
    assert not any(s.active for s in m.site_map().values())
    # identity hooks on every site leave everything unchanged
    with m.hooks([(n, lambda x, s: x) for n in m.site_map()]):
        torch.testing.assert_close(m(tokens), plain, atol=1e-5, rtol=1e-5)


def test_pattern_is_causal_and_normalised(tiny_model: Transformer) -> None:
    _, cache = tiny_model.run_with_cache(_tokens(), names=["layer0.pattern", "layer1.pattern"])
    for p in cache.values():
        assert torch.all(p.triu(diagonal=1) == 0)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))


def test_future_tokens_do_not_change_past_outputs(tiny_model: Transformer) -> None:
    a = _tokens(seed=1)
    b = a.clone()
    b[:, 6:] = (b[:, 6:] + 1) % 16
    out_a, out_b = tiny_model(a), tiny_model(b)
    torch.testing.assert_close(out_a[:, :6], out_b[:, :6])
    assert not torch.allclose(out_a[:, 6:], out_b[:, 6:])


def test_per_head_result_sums_to_attn_out(tiny_model: Transformer) -> None:
    _, cache = tiny_model.run_with_cache(_tokens(), names=["layer1.result", "layer1.attn_out", "layer1.z"])
    attn = tiny_model.blocks[1].attn
    torch.testing.assert_close(cache["layer1.result"].sum(1) + attn.out.bias, cache["layer1.attn_out"], atol=1e-5, rtol=1e-5)
    by_hand = torch.einsum("bhtd,hdm->bhtm", cache["layer1.z"], attn.W_O)
    torch.testing.assert_close(by_hand, cache["layer1.result"], atol=1e-5, rtol=1e-5)


def test_weight_views_match_projection(tiny_model: Transformer) -> None:
    attn = tiny_model.blocks[0].attn
    x = torch.randn(2, 5, 32)
    b, t, h, dh = 2, 5, 4, 8
    q_fused = attn.qkv(x)[..., : h * dh].view(b, t, h, dh).transpose(1, 2)
    q_views = torch.einsum("btm,hmd->bhtd", x, attn.W_Q) + attn.qkv.bias[: h * dh].view(h, dh)[None, :, None]
    torch.testing.assert_close(q_fused, q_views, atol=1e-5, rtol=1e-5)


def test_features_replace_token_embedding_where_masked() -> None:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(n_layers=1, n_heads=2, d_model=16).resolved(d_vocab=5, n_ctx=5, d_feature=3, d_out=4))
    tokens = torch.tensor([[4, 1, 4, 2, 4]])
    feats = torch.randn(1, 5, 3)
    mask = tokens == 4
    logits, cache = m.run_with_cache(tokens, feats, mask, names=["embed"])
    assert logits.shape == (1, 5, 4)
    torch.testing.assert_close(cache["embed"][0, 0], m.feature_in(feats[0, 0]))
    torch.testing.assert_close(cache["embed"][0, 1], m.W_E.weight[1])


def test_same_seed_same_init_and_outputs() -> None:
    def build(seed: int) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=8, n_ctx=10))

    t = _tokens(v=8)
    assert torch.equal(build(3)(t), build(3)(t))
    assert not torch.equal(build(3)(t), build(4)(t))


def test_selectors_and_errors(tiny_model: Transformer) -> None:
    assert [(s.name, h) for s, h in tiny_model.resolve_sites("layer1.head2.z")] == [("layer1.z", 2)]
    assert len(tiny_model.resolve_sites("layer*.head*.pattern")) == 8
    assert [s.name for s, _ in tiny_model.resolve_sites("layer*.resid_post")] == ["layer0.resid_post", "layer1.resid_post"]
    with pytest.raises(UnknownSiteError, match="layer0.resid_pre"):
        tiny_model.site("layer0.attn")
    with pytest.raises(ValueError, match="valid heads are 0..3"):
        tiny_model.resolve_sites("layer0.head7.z")
    with pytest.raises(ValueError, match="no head axis"):
        tiny_model.resolve_sites("layer0.head1.resid_post")


def test_config_validation_names_bad_values() -> None:
    with pytest.raises(ValueError, match="positional='sinusoid'"):
        TransformerConfig(positional="sinusoid").resolved(d_vocab=4, n_ctx=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d_vocab must be > 0"):
        TransformerConfig().resolved()
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        Transformer(TransformerConfig(n_heads=2, d_model=8).resolved(d_vocab=4, n_ctx=4))(torch.zeros(1, 5, dtype=torch.long))


def _site_free_forward(m: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The same network written directly from its weights: no sites, no fused kernel."""
    import torch.nn.functional as F

    cfg = m.cfg
    t = tokens.shape[1]
    x = m.W_E.weight[tokens] + m.W_pos.weight[:t]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for block in m.blocks:
        a = block.attn
        h = F.layer_norm(x, (cfg.d_model,), block.ln1.weight, block.ln1.bias)
        q = torch.einsum("btm,hmd->bhtd", h, a.W_Q) + a.qkv.bias[: cfg.n_heads * cfg.d_head].view(cfg.n_heads, 1, cfg.d_head)
        k = torch.einsum("btm,hmd->bhtd", h, a.W_K) + a.qkv.bias[cfg.n_heads * cfg.d_head : 2 * cfg.n_heads * cfg.d_head].view(cfg.n_heads, 1, cfg.d_head)
        v = torch.einsum("btm,hmd->bhtd", h, a.W_V) + a.qkv.bias[2 * cfg.n_heads * cfg.d_head :].view(cfg.n_heads, 1, cfg.d_head)
        scores = (q @ k.transpose(-1, -2) / cfg.d_head**0.5).masked_fill(~causal, float("-inf"))
        z = scores.softmax(-1) @ v
        x = x + torch.einsum("bhtd,hdm->btm", z, a.W_O) + a.out.bias
    x = F.layer_norm(x, (cfg.d_model,), m.ln_final.weight, m.ln_final.bias)
    return x @ m.unembed.weight.T + m.unembed.bias


def test_matches_a_site_free_implementation() -> None:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(n_layers=2, n_heads=4, d_model=32).resolved(d_vocab=16, n_ctx=12))
    for p in m.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.3)
    tokens = _tokens()
    torch.testing.assert_close(m(tokens), _site_free_forward(m, tokens), atol=1e-5, rtol=1e-4)
    out, _ = m.run_with_cache(tokens, names=["layer0.pattern", "layer1.result"])
    torch.testing.assert_close(out, _site_free_forward(m, tokens), atol=1e-5, rtol=1e-4)


def test_lecun_init_and_separate_attention_biases() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layers=1, n_heads=4, d_model=256, attn_only=False, attn_bias=False, init="lecun")
    m = Transformer(cfg.resolved(d_vocab=16, n_ctx=8, d_feature=512, d_out=5))
    # LeCun-normal: std 1/sqrt(fan_in), truncated at 2 sigma of the underlying normal
    for name, lin in [("qkv", m.blocks[0].attn.qkv), ("out", m.blocks[0].attn.out), ("fc_in", m.blocks[0].mlp.fc_in),
                      ("feature_in", m.feature_in), ("unembed", m.unembed)]:
        w, bound = lin.weight.detach(), 2 / lin.in_features**0.5 / 0.87962566103423978
        assert abs(float(w.std()) * lin.in_features**0.5 - 1) < 0.05, name
        assert float(w.abs().max()) <= bound + 1e-6, name
    emb = m.W_E.weight.detach()  # embedding tables keep init_std (Chan et al.'s truncated normal)
    assert float(emb.abs().max()) <= 2 * 0.02 / 0.87962566103423978 + 1e-6
    # attention without biases, embedding / unembedding / MLP with them
    assert m.blocks[0].attn.qkv.bias is None and m.blocks[0].attn.out.bias is None
    assert m.feature_in.bias is not None and m.unembed.bias is not None and m.blocks[0].mlp.fc_in.bias is not None
    # the default scheme is unchanged: N(0, 0.02) everywhere, biases wherever bias=True
    d = Transformer(TransformerConfig(n_layers=1, n_heads=4, d_model=256).resolved(d_vocab=16, n_ctx=8, d_feature=512, d_out=5))
    assert abs(float(d.blocks[0].attn.qkv.weight.detach().std()) - 0.02) < 0.001 and d.blocks[0].attn.qkv.bias is not None
    with pytest.raises(ValueError, match="init='xavier'; valid: 'normal', 'lecun'"):
        TransformerConfig(init="xavier").resolved(d_vocab=4, n_ctx=4)


@torch.no_grad()
def test_forward_from_a_layer_continues_the_forward(tiny_model: Transformer) -> None:
    """``forward_from(l, resid)`` on the residual stream entering layer l gives the full forward's logits."""
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (3, tiny_model.cfg.n_ctx))
    logits, cache = tiny_model.run_with_cache(tokens, names=["layer*.resid_pre"])
    for layer in range(tiny_model.n_layers):
        torch.testing.assert_close(tiny_model.forward_from(layer, cache[f"layer{layer}.resid_pre"]), logits, rtol=0, atol=1e-6)
    assert not torch.allclose(tiny_model.forward_from(1, cache["layer0.resid_pre"]), logits)  # a layer skipped changes them
