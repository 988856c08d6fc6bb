"""Built-in ``construct`` functions: hand-designed activations for clamp studies.

Each takes the current activation ``x`` (the full site tensor, detached) and the op context and
returns a value shaped like the selection (see :mod:`clamp.interventions.ops`).
"""

from __future__ import annotations

import torch

from clamp.interventions.ops import OpContext


def _require_pattern(ctx: OpContext) -> None:
    if ctx.site.info.dims[-2:] != ("q_pos", "k_pos"):
        raise ValueError(f"this constructor builds attention patterns; site {ctx.site.name} has dims {ctx.site.info.dims}")


def previous_token_pattern(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    """A perfect previous-token head: position i attends only to i-1 (position 0 to itself)."""
    _require_pattern(ctx)
    t = x.shape[-1]
    p = torch.zeros(t, t, device=x.device)
    p[0, 0] = 1.0
    idx = torch.arange(1, t, device=x.device)
    p[idx, idx - 1] = 1.0
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
