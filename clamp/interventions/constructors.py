"""Built-in ``construct`` functions: hand-designed activations for clamp studies.

Each takes the current activation ``x`` (the full site tensor; detached unless the intervention has
``grad: true``) and the op context, and returns a value broadcastable to the selection or shaped
like ``x`` (see :mod:`clamp.interventions.ops`). Batch-aware ones read ``ctx.field(...)``; those built
from other sites read ``ctx.read(...)``; :func:`~clamp.interventions.ops.declares` tells the engine which.

The paper's clamps (Singh et al. 2024, layers counted from 0: L0 previous-token, L1 induction):

* "1" — :func:`previous_token_pattern` on one L0 head's ``pattern``;
* "1,2,3qk,4" perfect match — :func:`induction_pattern` on the active L1 head's ``pattern``, query row;
* "3v,5" perfect copy — :func:`perfect_copy` on ``logits`` at the query, from that head's scores;
* "1,2" layer-1 clamp — L0's output := :func:`shifted` embeddings in a second pass that gives L1's
  patterns, and := :func:`site_value` (the embeddings) in the main pass.
"""

from __future__ import annotations

import torch

from clamp.interventions.ops import OpContext, declares


def _require_pattern(ctx: OpContext) -> None:
    if ctx.site.info.dims[-2:] != ("q_pos", "k_pos"):
        raise ValueError(f"this constructor builds attention patterns; site {ctx.site.name} has dims {ctx.site.info.dims}")


def previous_token_pattern(x: torch.Tensor, ctx: OpContext, strength: float = 1.0) -> torch.Tensor:
    """A perfect previous-token head: position i puts ``strength`` on i-1 and the rest on itself (position 0 on itself)."""
    _require_pattern(ctx)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"previous_token_pattern strength={strength} must be in [0, 1]")
    t = x.shape[-1]
    p = torch.eye(t, device=x.device) * (1.0 - strength)
    p[0, 0] = 1.0
    idx = torch.arange(1, t, device=x.device)
    p[idx, idx - 1] += strength
    return p


def self_pattern(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Each position attends only to itself (a head that moves no information between positions)."""
    _require_pattern(ctx)
    return torch.eye(x.shape[-1], device=x.device)


def uniform_pattern(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """Uniform causal attention: position i spreads 1/(i+1) over positions 0..i."""
    _require_pattern(ctx)
    t = x.shape[-1]
    mask = torch.ones(t, t, device=x.device).tril()
    return mask / mask.sum(-1, keepdim=True)


def _context_labels(ctx: OpContext, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query_pos [B], is_label [B, T])``: label positions are the non-feature positions before the query."""
    q = ctx.field("query_pos").to(device)
    keys = torch.arange(t, device=device)
    is_label = ~ctx.field("feature_mask").to(device).bool() & (keys[None] < q[:, None])
    return q, is_label


@declares(batch=["query_pos", "match_pos", "feature_mask"])
def induction_pattern(x: torch.Tensor, ctx: OpContext, strength: float = 1.0) -> torch.Tensor:
    """The induction layer's query row: ``strength`` on the context label whose exemplar matches the
    query (``match_pos``), ``1 - strength`` shared by the other context labels, 0 on exemplars.

    ``strength = 1`` is the paper's perfect match ("1,2,3qk,4"); the appendix sweeps it (0.5 = no
    information about which label is right). A sequence without a match in its context (the
    in-weights split) gets uniform attention over its context labels. Only the query row is
    defined (other rows are ``x``): select it with ``positions: [-1]``.
    """
    _require_pattern(ctx)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"induction_pattern strength={strength} must be in [0, 1]")
    b, t = x.shape[0], x.shape[-1]
    q, is_label = _context_labels(ctx, t, x.device)
    match = ctx.field("match_pos").to(x.device)
    has = match >= 0
    is_match = (torch.arange(t, device=x.device)[None] == match[:, None]) & has[:, None]
    other = is_label & ~is_match
    n_other = other.sum(-1, keepdim=True)
    on_match = torch.where(n_other > 0, strength, 1.0)  # a single context label takes everything
    row = is_match * on_match + other * (1.0 - strength) / n_other.clamp_min(1)
    uniform = is_label / is_label.sum(-1, keepdim=True).clamp_min(1)
    row = torch.where(has[:, None], row, uniform).to(x.dtype)
    v = x.clone()
    v[torch.arange(b, device=x.device), ..., q, :] = row[:, None, :] if x.dim() == 4 else row
    return v


@declares(reads=lambda kw: [f"layer{kw['layer']}.attn_scores"], batch=["tokens", "query_pos", "feature_mask"])
def perfect_copy(x: torch.Tensor, ctx: OpContext, head: int = 0, layer: int = 1, fill: float = -1e4) -> torch.Tensor:
    """Query logits that copy perfectly through one head's attention ("3v,5"): every label not in the
    context gets ``fill`` (effectively -inf, finite so masks stay NaN-free), each context label gets
    the head's pre-softmax score from the query to its position (the log-sum-exp over its positions
    if it occurs twice), so the output softmax equals the head's attention over the context labels.

    With ``grad: true`` the loss trains W_Q and W_K of that head (and layer 0 through its keys), and
    nothing downstream of the head. Site: ``logits``; only the query row is defined (``positions: [-1]``).
    """
    if ctx.site.info.dims[-1] != "d_out":
        raise ValueError(f"perfect_copy builds output logits; site {ctx.site.name} has dims {ctx.site.info.dims} (use `logits`)")
    scores = ctx.read(f"layer{layer}.attn_scores")
    n_heads = scores.shape[1]
    if not 0 <= head < n_heads:
        raise ValueError(f"perfect_copy head={head} out of range; valid heads are 0..{n_heads - 1}")
    b, t, d_out = x.shape
    q, is_label = _context_labels(ctx, t, x.device)
    rows = scores[torch.arange(b, device=x.device), head, q].float()  # [B, T]: query -> every key
    rows = rows.masked_fill(~is_label, 0.0)
    top = rows.masked_fill(~is_label, float("-inf")).amax(-1, keepdim=True).detach().clamp_min(-1e30)
    weight = (rows - top).exp() * is_label
    labels = torch.where(is_label, ctx.field("tokens").to(x.device), 0)
    if bool((labels >= d_out).any()):
        raise ValueError(f"perfect_copy: a context label id is >= the number of logits ({d_out})")
    mass = torch.zeros(b, d_out, device=x.device, dtype=weight.dtype).scatter_add(-1, labels, weight)
    logit = torch.where(mass > 0, mass.clamp_min(1e-30).log() + top, torch.full_like(mass, fill))
    v = x.clone()
    v[torch.arange(b, device=x.device), q] = logit.to(x.dtype)
    return v


def _read_like(x: torch.Tensor, ctx: OpContext, source: str) -> torch.Tensor:
    src = ctx.read(source)
    if src.shape != x.shape:
        raise ValueError(f"site {source!r} has shape {list(src.shape)}, site {ctx.site.name} has {list(x.shape)}: they cannot stand for each other")
    return src


@declares(reads=lambda kw: [kw["source"]])
def site_value(x: torch.Tensor, ctx: OpContext, source: str = "layer0.resid_pre") -> torch.Tensor:
    """Another site's activation, e.g. layer 0's output := the embeddings (``layer0.resid_pre``)."""
    return _read_like(x, ctx, source)


@declares(reads=lambda kw: [kw["source"]])
def shifted(x: torch.Tensor, ctx: OpContext, source: str = "layer0.resid_pre", by: int = 1, keep_last: bool = True) -> torch.Tensor:
    """Another site's activation shifted ``by`` positions forward: position i takes position i - by's
    value; the first ``by`` positions keep their own, and so does the last (the query) if ``keep_last``.

    On ``layer0.resid_post`` from the embeddings this is the paper's "perfect previous-token input":
    each label's residual carries the preceding exemplar, as a perfect previous-token circuit would make it.
    """
    src = _read_like(x, ctx, source)
    t = src.shape[1]
    if not 1 <= by < t:
        raise ValueError(f"shifted by={by} must be in 1..{t - 1}")
    v = torch.cat([src[:, :by], src[:, :-by]], dim=1)
    if keep_last:
        v = torch.cat([v[:, :-1], src[:, -1:]], dim=1)
    return v
