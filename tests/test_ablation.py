"""Batched head ablation (``clamp.metrics.ablation``) equals one forward per head through the engine."""

from __future__ import annotations

import pytest
import torch

from clamp.interventions.engine import intervene
from clamp.metrics.ablation import ablation_importance
from clamp.training import masked_loss_and_accuracy
from models import Transformer, TransformerConfig
from synthetic_data.base import model_inputs


def _model_and_batch(seed: int = 0, **cfg) -> tuple[Transformer, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    config = TransformerConfig(**{"n_layers": 2, "n_heads": 3, "d_model": 24, "init_std": 0.3, **cfg}).resolved(d_vocab=11, n_ctx=9)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 11, (7, 9))
    mask = torch.rand(7, 9) > 0.3
    return model, {"tokens": tokens, "targets": torch.randint(0, 11, (7, 9)), "loss_mask": mask}


def _reference(model: torch.nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The straightforward loop: one forward per head, the head's z ablated by the engine's op."""
    op = {"kind": "zero"} if kind == "zero" else {"kind": "mean", "over": "batch"}
    base, _ = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
    out = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            with intervene(model, [{"site": f"layer{layer}.head{head}.z", "op": op, "name": "probe"}]):
                loss, _ = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
            out[layer, head] = loss - base
    return out


# 7-sequence batch: every copy in one forward; 4 ablations (+ the clean copy) per forward, uneven for
# 18 ablations; 3 per forward; 2 copies would hold one ablation each: the per-head loop instead
@pytest.mark.parametrize("max_sequences", [8192, 35, 28, 14])
@pytest.mark.parametrize("cfg", [{}, {"attn_only": False, "positional": "rotary", "n_layers": 3}])
@torch.no_grad()
def test_batched_ablation_equals_one_forward_per_head(max_sequences: int, cfg: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import clamp.metrics.ablation as ablation

    model, batch = _model_and_batch(**cfg)
    loop = ablation._one_head_at_a_time
    calls: list[str] = []
    monkeypatch.setattr(ablation, "_one_head_at_a_time", lambda *a: calls.append(a[2]) or loop(*a))
    got = ablation_importance(model, batch, max_sequences=max_sequences)
    assert calls == ([] if max_sequences >= 28 else ["zero", "mean"])
    for kind in ("zero", "mean"):
        want = _reference(model, batch, kind)
        assert want.abs().max() > 1e-3  # the heads matter: the comparison is not of zeros
        torch.testing.assert_close(got[kind], want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got["zero"], got["mean"])
    assert not any(s.active for s in model.site_map().values())  # hooks removed


@torch.no_grad()
def test_ablation_of_a_dead_head_is_exactly_zero_and_live_clamps_use_the_per_head_loop() -> None:
    model, batch = _model_and_batch()
    d = model.cfg.d_head
    model.blocks[1].attn.qkv.weight[2 * 24 + 1 * d : 2 * 24 + 2 * d] = 0  # layer 1 head 1: v = 0, so z = 0
    if model.blocks[1].attn.qkv.bias is not None:
        model.blocks[1].attn.qkv.bias[2 * 24 + 1 * d : 2 * 24 + 2 * d] = 0
    got = ablation_importance(model, batch)
    assert got["zero"][1, 1] == 0 and got["mean"][1, 1] == 0
    # under a live clamp (a batch mean on another head), the clamp must see the probe batch itself
    with intervene(model, [{"site": "layer0.head0.z", "op": {"kind": "mean", "over": "batch"}}]):
        clamped = ablation_importance(model, batch)
        for kind in ("zero", "mean"):
            torch.testing.assert_close(clamped[kind], _reference(model, batch, kind), rtol=0, atol=0)
    assert not torch.allclose(clamped["zero"], got["zero"])


def test_unknown_kind_is_refused() -> None:
    model, batch = _model_and_batch()
    with pytest.raises(ValueError, match="valid: \\['zero', 'mean'\\]"):
        ablation_importance(model, batch, kinds=["resample"])
