"""TensorBoard helpers for per-head scores (plain dicts and arrays; no Lightning dependency).

* :func:`head_scalars` flattens a ``[n_layers, n_heads]`` score into scalar tags ``{name}/L{l}H{h}``;
* :func:`custom_scalar_layout` groups those tags into multi-line charts for
  ``SummaryWriter.add_custom_scalars`` (one chart with every head, one chart per layer);
* :func:`heatmap_image` renders the layer x head grid as an ``HWC uint8`` image for ``add_image``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["custom_scalar_layout", "head_scalars", "head_tag", "heatmap_image"]


def head_tag(name: str, layer: int, head: int) -> str:
    """The scalar tag of one head: ``f"{name}/L{layer}H{head}"``."""
    return f"{name}/L{layer}H{head}"


def _as_2d(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    a = scores.detach().cpu().float().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected scores [n_layers, n_heads] (or [n_heads]), got shape {a.shape}")
    return a


def head_scalars(name: str, scores: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``{f"{name}/L{l}H{h}": float(scores[l, h])}`` for every head (NaN scores kept as NaN).

    A 1-D ``[n_heads]`` score is treated as layer 0.
    """
    a = _as_2d(scores)
    return {head_tag(name, l, h): float(a[l, h]) for l in range(a.shape[0]) for h in range(a.shape[1])}


def custom_scalar_layout(metric_names: Sequence[str], n_layers: int, n_heads: int) -> dict[str, dict[str, list]]:
    """Layout for ``SummaryWriter.add_custom_scalars``: per metric, all heads in one chart plus one chart per layer.

    ``{metric: {f"{metric} all heads": ['Multiline', [regex]], f"{metric} L{l}": ['Multiline', [regex]], ...}}``.
    Regexes are anchored (``^name/L\\d+H\\d+$``) and match the tags of :func:`head_scalars`;
    ``n_heads`` only bounds the per-layer charts (heads ``0..n_heads-1``).
    """
    if n_layers <= 0 or n_heads <= 0:
        raise ValueError(f"custom_scalar_layout: n_layers and n_heads must be > 0, got {n_layers}, {n_heads}")
    heads = "|".join(str(h) for h in range(n_heads))
    layout: dict[str, dict[str, list]] = {}
    for name in metric_names:
        esc = re.escape(name)
        charts: dict[str, list] = {f"{name} all heads": ["Multiline", [rf"^{esc}/L\d+H\d+$"]]}
        for l in range(n_layers):
            charts[f"{name} L{l}"] = ["Multiline", [rf"^{esc}/L{l}H({heads})$"]]
        layout[name] = charts
    return layout


def heatmap_image(
    scores: torch.Tensor | np.ndarray,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Render a ``[n_layers, n_heads]`` score grid as an ``[H, W, 3] uint8`` image (matplotlib Agg).

    Rows are layers, columns heads, each cell annotated with its value (NaN shown as "nan");
    colour limits default to the finite min/max. Use ``writer.add_image(tag, img, step, dataformats='HWC')``.
    """
    a = _as_2d(scores)
    finite = a[np.isfinite(a)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    rgba = _canvas(a.shape).draw(a, title, lo, hi)
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


class _HeatmapCanvas:
    """One matplotlib figure per grid shape, laid out once and redrawn with new values: building and
    laying out a figure costs ~10x drawing one, and probes render a dozen heatmaps at a time."""

    def __init__(self, shape: tuple[int, int]) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n_layers, n_heads = shape
        self.fig = Figure(figsize=(1.2 + 0.6 * n_heads, 1.0 + 0.5 * n_layers), dpi=100)
        FigureCanvasAgg(self.fig)
        ax = self.fig.add_subplot(1, 1, 1)
        self.im = ax.imshow(np.zeros(shape), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
        ax.set_yticks(range(n_layers), [str(l) for l in range(n_layers)])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        self.title = ax.set_title(" ", fontsize=9)
        self.texts = [[ax.text(h, l, "0.00", ha="center", va="center", fontsize=7) for h in range(n_heads)] for l in range(n_layers)]
        self.colorbar = self.fig.colorbar(self.im, ax=ax, fraction=0.05, pad=0.02)
        self.fig.tight_layout()

    def draw(self, a: np.ndarray, title: str, lo: float, hi: float) -> np.ndarray:
        self.im.set_data(np.ma.masked_invalid(a))
        self.im.set_clim(lo, hi)
        self.title.set_text(title)
        for l, row in enumerate(self.texts):
            for h, text in enumerate(row):
                v = float(a[l, h])
                frac = 0.5 if not math.isfinite(v) else (v - lo) / (hi - lo)
                text.set_text("nan" if not math.isfinite(v) else f"{v:.2f}")
                text.set_color("black" if frac > 0.6 else "white")
        self.fig.canvas.draw()
        return np.ascontiguousarray(np.asarray(self.fig.canvas.buffer_rgba())[..., :3], dtype=np.uint8)


_CANVASES: dict[tuple[int, int], _HeatmapCanvas] = {}


def _canvas(shape: tuple[int, int]) -> _HeatmapCanvas:
    if shape not in _CANVASES:
        _CANVASES[shape] = _HeatmapCanvas(shape)
    return _CANVASES[shape]
