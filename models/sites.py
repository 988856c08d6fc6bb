"""Named intervention sites: identity points in a forward pass that hooks can read or rewrite.

A :class:`Site` costs one Python attribute check when nothing is attached, so a model can
mark every interesting activation without slowing ordinary training. Hooks are plain
callables ``fn(tensor, site) -> tensor | None`` (``None`` means "read only").

Shape convention (the same for every model that exposes sites):

* per-head sites (``q``, ``k``, ``v``, ``z``, ``result``, ``attn_scores``, ``pattern``) put the
  head axis at dim 1: ``[batch, head, pos, ...]``; ``pattern`` is ``[batch, head, q_pos, k_pos]``;
* residual-like sites are ``[batch, pos, d]``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

Hook = Callable[[torch.Tensor, "Site"], torch.Tensor | None]


@dataclass(frozen=True)
class SiteInfo:
    """Static description of a site: its name, named dims and the sizes known before a forward."""

    name: str
    dims: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    layer: int | None = None

    @property
    def head_dim(self) -> int | None:
        """Index of the head axis, or None for sites without heads."""
        return self.dims.index("head") if "head" in self.dims else None

    @property
    def pos_dim(self) -> int | None:
        """Index of the (query) position axis, or None."""
        for name in ("pos", "q_pos"):
            if name in self.dims:
                return self.dims.index(name)
        return None

    def shape_str(self) -> str:
        parts = [f"{d}={self.sizes[d]}" if d in self.sizes else d for d in self.dims]
        return "[" + ", ".join(parts) + "]"

    def expected_shape(self, batch: int, seq: int) -> tuple[int, ...]:
        """Concrete shape for a given batch size and sequence length."""
        out = []
        for d in self.dims:
            if d == "batch":
                out.append(batch)
            elif d in ("pos", "q_pos", "k_pos"):
                out.append(seq)
            else:
                out.append(self.sizes[d])
        return tuple(out)


class Site(nn.Module):
    """An identity module with a name. Hooks attached to it read or replace the activation."""

    generation = 0  # bumped whenever any site's hooks change: callers that route hooks recheck only then

    def __init__(self, info: SiteInfo) -> None:
        super().__init__()
        self.info = info
        self._hooks: list[Hook] = []

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def active(self) -> bool:
        """True when any hook is attached (models use this to materialise lazy activations)."""
        return bool(self._hooks)

    def overwrites(self, like: torch.Tensor) -> bool:
        """True when the first hook replaces all of an activation shaped like ``like`` without reading
        its values (e.g. a clamp to a reference model's pattern at full strength), so a model may skip
        computing it and pass ``like`` uninitialised. A hook says so through its own ``overwrites(x, site)``."""
        first = self._hooks[0] if self._hooks else None
        check = getattr(first, "overwrites", None)
        return bool(check is not None and check(like, self))

    def add_hook(self, fn: Hook) -> Callable[[], None]:
        """Attach ``fn``; returns a callable that removes exactly this hook."""
        self._hooks.append(fn)
        Site.generation += 1

        def remove() -> None:
            if fn in self._hooks:
                self._hooks.remove(fn)
                Site.generation += 1

        return remove

    def clear_hooks(self) -> None:
        self._hooks.clear()
        Site.generation += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self._hooks:
            out = fn(x, self)
            if out is not None:
                x = out
        return x

    def extra_repr(self) -> str:
        return f"{self.name} {self.info.shape_str()}"


class UnknownSiteError(KeyError):
    """A site name or selector that the model does not have (the message lists the valid ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# TransformerLens hook names -> this project's site names (the same activations; TL's per-head hooks
# carry the head axis too, which the ``head<H>`` selector picks here)
_TL_BLOCK = {
    "hook_resid_pre": "resid_pre", "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v",
    "attn.hook_attn_scores": "attn_scores", "attn.hook_pattern": "pattern", "attn.hook_z": "z",
    "attn.hook_result": "result", "hook_attn_out": "attn_out", "hook_resid_mid": "resid_mid",
    "mlp.hook_post": "mlp_hidden", "hook_mlp_out": "mlp_out", "hook_resid_post": "resid_post",
}
_TL_TOP = {"hook_embed": "embed", "hook_pos_embed": "pos_embed"}
_TL_RE = re.compile(r"^blocks\.(?P<layer>\d+|\*)\.(?P<hook>.+)$")


def from_transformer_lens(name: str) -> str:
    """``blocks.0.attn.hook_pattern`` -> ``layer0.pattern`` (also ``blocks.*.…``); other names unchanged."""
    if name in _TL_TOP:
        return _TL_TOP[name]
    m = _TL_RE.match(name)
    if m and m["hook"] in _TL_BLOCK:
        return f"layer{m['layer']}.{_TL_BLOCK[m['hook']]}"
    return name


_HEAD_RE = re.compile(r"^(?P<prefix>.*?)\.head(?P<head>\d+|\*|\[[^\]]*\])\.(?P<leaf>[^.]+)$")


def parse_heads(spec: str, n_heads: int, selector: str) -> list[int]:
    """``'3'`` -> [3]; ``'*'`` -> all; ``'[0,2,5]'`` / ``'[1-7]'`` / ``'[0,4-6]'`` -> that set (sorted, unique)."""
    if spec == "*":
        return list(range(n_heads))
    items = spec[1:-1].split(",") if spec.startswith("[") else [spec]
    heads: set[int] = set()
    for item in (i.strip() for i in items):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"selector {selector!r}: bad head set {spec!r}; write head<H>, head*, head[0,2,5] or head[1-7]")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"selector {selector!r}: empty head range {item!r} in {spec!r}")
        heads.update(range(lo, hi + 1))
    bad = sorted(h for h in heads if not 0 <= h < n_heads)
    if bad:
        raise ValueError(f"selector {selector!r}: head {', '.join(map(str, bad))} out of range; valid heads are 0..{n_heads - 1}")
    return sorted(heads)


class SiteModelMixin:
    """Gives any ``nn.Module`` holding :class:`Site` submodules a name-based site API.

    The project's own transformer and Hugging Face adapters both use this, so the
    interventions engine and metrics never depend on a particular model class.
    """

    n_layers: int
    n_heads: int

    def site_map(self) -> dict[str, Site]:
        cache = getattr(self, "_site_cache", None)
        if cache is None:
            cache = {m.name: m for m in self.modules() if isinstance(m, Site)}  # type: ignore[attr-defined]
            object.__setattr__(self, "_site_cache", cache)
        return cache

    def sites(self) -> list[SiteInfo]:
        """Every site of the model, in forward order, with its named dims and known sizes."""
        return [s.info for s in self.site_map().values()]

    def describe_sites(self) -> str:
        """Human-readable table of sites (used in error messages and ``clamp sites``)."""
        rows = [f"  {i.name:<24} {i.shape_str()}" for i in self.sites()]
        head_sites = sorted({i.name.split(".")[-1] for i in self.sites() if i.head_dim is not None})
        tail = (
            f"\n  per-head selectors: layer<L>.head<H>.<{'|'.join(head_sites)}> "
            f"(H in 0..{self.n_heads - 1}, *, or a set like [0,2,5] / [1-7]), layer* matches every layer"
            if head_sites
            else ""
        )
        return "\n".join(rows) + tail

    def site(self, name: str) -> Site:
        """The site called ``name``; an unknown name raises with the list of valid sites."""
        try:
            return self.site_map()[from_transformer_lens(name)]
        except KeyError:
            raise UnknownSiteError(f"unknown site {name!r}; this model's sites are:\n{self.describe_sites()}") from None

    def resolve_sites(self, selector: str) -> list[tuple[Site, int | None]]:
        """Expand a selector into ``(site, head)`` pairs.

        ``layer1.head3.z`` -> one head of one site; ``layer1.head*.z`` -> every head;
        ``layer1.head[1-7].z`` / ``layer1.head[0,2,5].z`` -> a set of heads; ``layer*.resid_post`` -> every layer. ``head=None`` means the whole tensor.
        """
        head: str | None = None
        selector = from_transformer_lens(selector)
        base = selector
        m = _HEAD_RE.match(selector)
        if m:
            base = f"{m['prefix']}.{m['leaf']}"
            head = m["head"]
        pattern = re.compile("^" + re.escape(base).replace(r"\*", r"\d+") + "$")
        matched = [s for n, s in self.site_map().items() if pattern.match(n)]
        if not matched:
            raise UnknownSiteError(f"site selector {selector!r} matches no site; this model's sites are:\n{self.describe_sites()}")
        out: list[tuple[Site, int | None]] = []
        for s in matched:
            if head is None:
                out.append((s, None))
                continue
            if s.info.head_dim is None:
                raise ValueError(f"selector {selector!r}: site {s.name!r} has no head axis (dims {s.info.dims})")
            for h in parse_heads(head, s.info.sizes["head"], selector):
                out.append((s, h))
        return out

    @contextmanager
    def hooks(self, pairs: Sequence[tuple[str, Hook]]) -> Iterator[None]:
        """Attach ``(site_name, fn)`` hooks for the duration of the block."""
        removers = [self.site(name).add_hook(fn) for name, fn in pairs]
        try:
            yield
        finally:
            for r in removers:
                r()

    def run_with_cache(
        self,
        *args,
        names: Sequence[str] | None = None,
        allow_missing_features: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward once and return ``(output, {name: activation})`` for the requested sites.

        ``names`` take the selectors interventions take: ``layer1.pattern`` (one site),
        ``layer*.resid_post`` (every layer; one entry per site), ``layer1.head3.z`` (one head:
        the head axis is removed) and ``layer1.head*.z`` (one entry per head). ``None``: every site.

        The inputs are the forward's arguments, or one batch dict whose keys name them (e.g.
        ``{"tokens", "features", "feature_mask", ...}``; other keys are ignored). A model that
        reads continuous features refuses a forward without them, since it would silently
        compute something else (``allow_missing_features=True`` for token-only probes).

        Activations are detached. Asking for ``pattern`` forces the explicit attention path,
        which is numerically equivalent to the fused one (see tests).
        """
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            args, kwargs = (), self._forward_kwargs(args[0])
        if not allow_missing_features:
            self._check_features(args, kwargs)
        selectors = list(self.site_map()) if names is None else list(names)
        wanted: dict[str, list[tuple[str, int | None]]] = {}  # site -> [(cache key, head)]
        for sel in selectors:
            pairs = self.resolve_sites(sel)
            for site, head in pairs:
                key = site.name if head is None else _head_name(site.name, head)
                wanted.setdefault(site.name, []).append((key, head))
        cache: dict[str, torch.Tensor] = {}

        def make(entries: list[tuple[str, int | None]]) -> Hook:
            def read(x: torch.Tensor, site: Site) -> None:
                for key, head in entries:
                    cache[key] = (x if head is None else x.select(site.info.head_dim, head)).detach()

            return read

        with self.hooks([(n, make(e)) for n, e in wanted.items()]):
            out = self(*args, **kwargs)  # type: ignore[operator]
        return out, cache

    def _forward_kwargs(self, batch: Mapping[str, object]) -> dict[str, object]:
        """The entries of ``batch`` named like the forward's parameters."""
        params = inspect.signature(self.forward).parameters  # type: ignore[attr-defined]
        return {k: batch[k] for k in params if k in batch}

    def _check_features(self, args: tuple, kwargs: Mapping[str, object]) -> None:
        d_feature = getattr(getattr(self, "cfg", None), "d_feature", 0)
        if not d_feature:
            return
        bound = inspect.signature(self.forward).bind_partial(*args, **kwargs)  # type: ignore[attr-defined]
        if bound.arguments.get("features") is None:
            raise ValueError(
                f"run_with_cache: this model reads continuous features (d_feature={d_feature}) and none were given, "
                "so the feature positions would see placeholder tokens; pass the whole batch "
                "(model.run_with_cache(batch)) or features=/feature_mask=, or allow_missing_features=True for a token-only probe"
            )


def _head_name(site_name: str, head: int) -> str:
    """``layer1.z`` + head 3 -> ``layer1.head3.z`` (the selector of one head)."""
    prefix, _, leaf = site_name.rpartition(".")
    return f"{prefix}.head{head}.{leaf}" if prefix else f"head{head}.{leaf}"
