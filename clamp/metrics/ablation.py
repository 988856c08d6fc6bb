"""Causal importance of each attention head: the loss increase when its output ``z`` is ablated.

``zero`` sets the head's ``z`` to 0; ``mean`` replaces it by its mean over the batch (per position),
exactly what the interventions engine's ``{"kind": "mean", "over": "batch"}`` does. One forward per
(kind, head) is what a researcher would write; :func:`ablation_importance` instead runs the probe
batch repeated once per (kind, head) in a few larger forwards, copy ``i`` ablating head ``i``
through hooks on the ``z`` sites. On a GPU a probe-sized forward is mostly launch overhead, so this
turns 33 forwards into a few. On CPU a probe-sized forward is already compute-bound (the attention
kernel costs the same per sequence and head at any batch size): there, batching measured as fast
as the loop, not faster (4k-sequence chunks; 8k ones fall out of cache and are slower).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from clamp.interventions.engine import intervene
from clamp.training import masked_loss_and_accuracy
from synthetic_data.base import model_inputs

KINDS = ("zero", "mean")
OPS = {"zero": {"kind": "zero"}, "mean": {"kind": "mean", "over": "batch"}}


def ablation_importance(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    kinds: Sequence[str] = KINDS,
    max_sequences: int = 4096,
    max_logits: int = 2**26,
) -> dict[str, torch.Tensor]:
    """``{kind: [n_layers, n_heads]}``: loss with the head ablated minus the clean loss, on ``batch``.

    Batched when the model carries no hooks and a forward of at most ``max_sequences`` sequences and
    ``max_logits`` logits holds at least 4 copies of the batch (one of them the clean baseline).
    Otherwise one forward per head through the engine: with a clamp live (a probe under
    ``ClampCallback``) a clamp that depends on the batch (a mean over it, a resample) must see the
    probe batch as it is, and long sequences or large vocabularies gain nothing from batching.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"ablation kinds {bad}; valid: {list(KINDS)}")
    tokens = batch["tokens"]
    d_out = int(model.site("logits").info.sizes.get("d_out", 1))
    copies = min(max_sequences // max(tokens.shape[0], 1), max_logits // max(tokens.numel() * d_out, 1))
    if _hooked(model) or copies < 4:
        return {kind: _one_head_at_a_time(model, batch, kind) for kind in kinds}
    return _batched(model, batch, list(kinds), copies)


def _hooked(model: nn.Module) -> bool:
    return any(site.active for site in model.site_map().values()) or bool(model._forward_pre_hooks or model._forward_hooks)


def _one_head_at_a_time(model: nn.Module, batch: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    # the baseline goes through the same (fused-attention) path as the ablated forwards, so a
    # head whose output is already zero scores exactly 0 rather than kernel round-off
    base, _ = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
    out = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            with intervene(model, [{"site": f"layer{layer}.head{head}.z", "op": OPS[kind], "name": "probe"}], batch=batch):
                loss, _ = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
            out[layer, head] = loss - base
    return out


def _batched(model: nn.Module, batch: Mapping[str, torch.Tensor], kinds: list[str], per_chunk: int) -> dict[str, torch.Tensor]:
    """Each forward holds a clean copy of the batch and up to ``per_chunk - 1`` ablated ones: the clean
    copy is the baseline (the same forward, so a head whose ablation changes nothing scores 0, not
    round-off) and gives the batch mean that ``mean`` writes.

    A model with ``forward_from(layer, resid)`` (the project's transformer) gets one layer's ablations
    per forward, started at that layer from the clean residual stream: the layers before it run once,
    not once per copy (a quarter less work for two layers, about half for deep models)."""
    n_layers, n_heads = model.n_layers, model.n_heads
    batch = dict(batch)
    inputs = model_inputs(batch)
    n = int(inputs[0].shape[0])
    ablations = [(kind, l, h) for l in range(n_layers) for kind in kinds for h in range(n_heads)]
    start_at = getattr(model, "forward_from", None)
    groups = [[a for a in ablations if a[1] == l] for l in range(n_layers)] if start_at else [ablations]
    resid = _layer_inputs(model, inputs) if start_at else None
    scores: dict[tuple[str, int, int], torch.Tensor] = {}
    for group in groups:
        for start in range(0, len(group), per_chunk - 1):
            chunk = [("clean", -1, -1), *group[start : start + per_chunk - 1]]
            layers = sorted({l for _, l, _ in chunk if l >= 0})
            with model.hooks([(f"layer{l}.z", _ablate(chunk, l, n)) for l in layers]):
                if resid is not None:
                    logits = start_at(layers[0], resid[layers[0]].repeat(len(chunk), 1, 1))
                else:
                    logits = model(*(None if t is None else t.repeat(len(chunk), *(1,) * (t.dim() - 1)) for t in inputs))
            losses = torch.stack([masked_loss_and_accuracy(logits[i * n : (i + 1) * n], batch)[0] for i in range(len(chunk))])
            scores.update(zip(chunk[1:], losses[1:] - losses[0]))
    return {kind: torch.stack([scores[(kind, l, h)] for l in range(n_layers) for h in range(n_heads)]).float().cpu().view(n_layers, n_heads) for kind in kinds}


def _layer_inputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """The clean residual stream entering each layer (``layer{l}.resid_pre``), from one forward."""
    cache: dict[str, torch.Tensor] = {}
    names = [f"layer{l}.resid_pre" for l in range(model.n_layers)]
    with model.hooks([(name, lambda x, site: cache.__setitem__(site.name, x)) for name in names]):
        model(*inputs)
    return [cache[name] for name in names]


def _ablate(chunk: list[tuple[str, int, int]], layer: int, n: int):
    """Hook for ``layer``'s ``z`` over ``len(chunk)`` copies of an ``n``-sequence batch (copy 0 clean):
    copy ``i`` gets its head replaced as the engine's op would (``x + m * (value - x)``, ``m`` = 1 on
    that head), ``mean`` by the clean copy's mean over the batch, per position, computed in fp32."""

    def hook(x: torch.Tensor, _site: object) -> torch.Tensor:
        copies, heads = len(chunk), x.shape[1]
        m = torch.zeros(copies, heads, device=x.device, dtype=x.dtype)
        is_mean = torch.zeros(copies, device=x.device, dtype=x.dtype)
        for i, (kind, l, h) in enumerate(chunk):
            if l == layer:
                m[i, h] = 1
                is_mean[i] = kind == "mean"
        xs = x.reshape(copies, n, *x.shape[1:])
        mean = xs[0].float().mean(0, keepdim=True).to(x.dtype)  # [1, head, pos, d_head]
        value = is_mean.view(-1, *(1,) * (xs.dim() - 1)) * mean.unsqueeze(0)
        return (xs + m.view(copies, 1, heads, *(1,) * (x.dim() - 2)) * (value - xs)).reshape(x.shape)

    return hook
