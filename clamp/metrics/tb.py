"""TensorBoard helpers for per-head scores (plain dicts and arrays; no Lightning dependency).

* :func:`head_scalars` flattens a ``[n_layers, n_heads]`` score into scalar tags ``{name}/L{l}H{h}``;
* :func:`custom_scalar_layout` groups those tags into multi-line charts for
  ``SummaryWriter.add_custom_scalars`` (one chart with every head, one chart per layer);
* :func:`log_scalars` logs many scalars of one step to every logger (to TensorBoard as one event);
* :func:`heatmap_image` renders the layer x head grid as an ``HWC uint8`` image, and
  :func:`add_images` writes such images to TensorBoard.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["add_images", "custom_scalar_layout", "head_scalars", "head_tag", "heatmap_image", "log_scalars"]


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


def log_scalars(loggers: Sequence[Any], metrics: Mapping[str, float], step: int) -> None:
    """Log the scalars of one step to every logger: to a ``TensorBoardLogger`` as one event holding all
    of them (a probe logs ~400 scalars, and an event per scalar cost ~0.1 ms each), to any other
    logger through its ``log_metrics``."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.compat.proto.summary_pb2 import Summary

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and not logger._prefix:
            summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])
            logger.experiment._get_file_writer().add_summary(summary, step)
        else:
            logger.log_metrics(dict(metrics), step=step)


def add_images(writer: Any, images: Mapping[str, np.ndarray], step: int) -> None:
    """Write ``{tag: [H, W, 3] uint8}`` to a ``SummaryWriter`` as one event of PNG images.

    ``SummaryWriter.add_image`` resamples every image (Lanczos, even at scale 1) and compresses it at
    PNG level 6: ~8 ms for a heatmap. Flat-coloured heatmaps compress as well at level 1, ~2 ms.
    """
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = []
    for tag, img in images.items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        h, w, c = img.shape
        values.append(Summary.Value(tag=tag, image=Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buf.getvalue())))
    if values:
        writer._get_file_writer().add_summary(Summary(value=values), step)


def heatmap_image(
    scores: torch.Tensor | np.ndarray,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Render a ``[n_layers, n_heads]`` score grid as an ``[H, W, 3] uint8`` image.

    Rows are layers, columns heads, cells coloured by viridis and annotated with their value (NaN:
    a grey cell reading "nan"), with a colour bar labelled with its limits; the limits default to the
    finite min/max. Drawn with Pillow straight into pixels (about a millisecond; a matplotlib figure
    cost ~0.1 s, and a probe draws a dozen per round). Write it with :func:`add_images` (or
    ``writer.add_image(tag, img, step, dataformats='HWC')``).
    """
    a = _as_2d(scores)
    finite = a[np.isfinite(a)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    return _render(a, title, lo, hi)


_CELL_W, _CELL_H = 50, 26  # pixels per head (column) and per layer (row): room for "-0.00"
_LEFT, _TOP, _BOTTOM, _GAP, _BAR_W = 48, 26, 40, 12, 14
_NAN_RGB = (205, 205, 205)
_FONT_SIZES = {"value": 11, "tick": 12, "title": 13}


@functools.lru_cache(maxsize=None)
def _font(kind: str) -> Any:
    """Pillow's bundled font (no font file needed); the fixed bitmap font where Pillow lacks FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=_FONT_SIZES[kind])
    except (TypeError, ImportError, OSError, ValueError):
        return ImageFont.load_default()


@functools.lru_cache(maxsize=8192)
def _glyphs(text: str, kind: str) -> np.ndarray:
    """``text`` as an ink-coverage mask ``[h, w] float32`` in 0..1, cropped to its ink. Cached: a
    heatmap's texts are mostly the same few hundred strings, and rasterising text is the costly part."""
    from PIL import Image, ImageDraw

    font = _font(kind)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    img = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(img).text((-x0, -y0), text, font=font, fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _text(canvas: np.ndarray, xy: tuple[float, float], text: str, kind: str, anchor: str, rgb: tuple[int, int, int], upwards: bool = False) -> None:
    """Blend ``text`` into ``canvas`` with its ink box anchored at ``xy``: ``anchor`` is horizontal
    (l/m/r) + vertical (t/m/b); ``upwards`` writes it rotated by 90 degrees (an axis label)."""
    mask = _glyphs(text, kind)
    if upwards:
        mask = np.rot90(mask)
    h, w = mask.shape
    x = round(xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]])
    y = round(xy[1] - {"t": 0, "m": h / 2, "b": h}[anchor[1]])
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    region += m * (np.asarray(rgb, np.float32) - region)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.3g}"


@functools.lru_cache(maxsize=1)
def _viridis() -> np.ndarray:
    """viridis as a ``[256, 3]`` table of 0..255 values (what ``colormaps["viridis"](x)`` looks up)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return np.round(cmap(np.arange(cmap.N))[:, :3] * 255).astype(np.float32)


def _colours(frac: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] to viridis RGB, indexed as matplotlib indexes its table."""
    lut = _viridis()
    return lut[np.clip((frac * len(lut)).astype(int), 0, len(lut) - 1)]


def _render(a: np.ndarray, title: str, lo: float, hi: float) -> np.ndarray:
    n_layers, n_heads = a.shape
    gw, gh = n_heads * _CELL_W, n_layers * _CELL_H
    bar_h = max(gh, 2 * _CELL_H)  # room for both limit labels when there is a single layer
    bar_x = _LEFT + gw + _GAP
    hi_s, lo_s = f"{hi:.3g}", f"{lo:.3g}"
    label_w = max(_glyphs(hi_s, "tick").shape[1], _glyphs(lo_s, "tick").shape[1])
    width = max(bar_x + _BAR_W + 6 + label_w + 8, _glyphs(title, "title").shape[1] + 16)
    height = _TOP + max(gh + _BOTTOM, bar_h + 6)
    canvas = np.full((height, width, 3), 255.0, dtype=np.float32)  # blended in float, rounded once at the end

    ok = np.isfinite(a)
    frac = np.clip(np.where(ok, (a - lo) / (hi - lo), 0.0), 0.0, 1.0)
    rgb = _colours(frac)
    rgb[~ok] = _NAN_RGB
    canvas[_TOP : _TOP + gh, _LEFT : _LEFT + gw] = np.repeat(np.repeat(rgb, _CELL_H, 0), _CELL_W, 1)
    canvas[_TOP : _TOP + gh, _LEFT : _LEFT + gw : _CELL_W] = 255  # thin white lines between heads
    canvas[_TOP : _TOP + gh : _CELL_H, _LEFT : _LEFT + gw] = 255  # ... and between layers
    ramp = _colours(np.linspace(1.0, 0.0, bar_h))
    canvas[_TOP : _TOP + bar_h, bar_x : bar_x + _BAR_W] = ramp[:, None, :]

    black, white = (0, 0, 0), (255, 255, 255)
    _text(canvas, (width / 2, 5), title, "title", "mt", black)
    for l in range(n_layers):
        cy = _TOP + (l + 0.5) * _CELL_H
        _text(canvas, (_LEFT - 6, cy), str(l), "tick", "rm", black)
        for h in range(n_heads):
            text, fill = ("nan", black) if not ok[l, h] else (_fmt(float(a[l, h])), black if frac[l, h] > 0.6 else white)
            _text(canvas, (_LEFT + (h + 0.5) * _CELL_W, cy), text, "value", "mm", fill)
    for h in range(n_heads):
        _text(canvas, (_LEFT + (h + 0.5) * _CELL_W, _TOP + gh + 4), str(h), "tick", "mt", black)
    _text(canvas, (_LEFT + gw / 2, _TOP + gh + 21), "head", "tick", "mt", black)
    _text(canvas, (6, _TOP + gh / 2), "layer", "tick", "lm", black, upwards=True)
    _text(canvas, (bar_x + _BAR_W + 4, _TOP), hi_s, "tick", "lt", black)
    _text(canvas, (bar_x + _BAR_W + 4, _TOP + bar_h), lo_s, "tick", "lb", black)
    return np.round(canvas).astype(np.uint8)
