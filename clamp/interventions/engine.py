"""The engine: binds interventions to a model's sites and applies them on every forward.

Order of application (documented, deterministic): on each site, interventions run in the order
they were listed; each sees the output of the previous one. Sites run in forward order.

Cost model: hooks are attached only while at least one intervention on that site has a
non-zero alpha in the current mode, so an idle engine leaves the model exactly as it is (fused
attention kernel included). Reference models and patched runs are computed once per forward of
the main model, in a forward pre-hook, for all the sites that read them.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from clamp.interventions.ops import Op, OpContext, make_op
from clamp.interventions.schedules import MetricCondition, Schedule, Window
from clamp.interventions.transforms import get_transform
from models.sites import Site
from models.transformer import TransformerConfig

MODES = ("train", "val", "analysis")


@dataclass
class Intervention:
    """Site selector + operation + schedule (what a user writes in YAML or Python).

    Args:
        site: selector such as ``layer0.head1.pattern``, ``layer1.head*.z``, ``layer*.resid_post``.
        op: ``{kind: <op>, **params}``; kinds: zero, mean, resample, constant, scale, noise,
            clamp_to_reference, patch, construct, freeze, grad_only.
        schedule: when and how strongly (default: always, alpha 1).
        positions: token positions (on the query-position axis for patterns); negatives count from the end.
        features: indices on the last axis (neurons, residual dims, or key positions for patterns).
        during: which forwards it applies to: 'train', 'val' (validation and probes), 'analysis'.
        name: label in logs and errors (default: derived from site and op).
    """

    site: str
    op: dict[str, Any]
    schedule: Schedule = field(default_factory=Schedule)
    positions: list[int] | None = None
    features: list[int] | None = None
    during: list[str] = field(default_factory=lambda: ["train", "val", "analysis"])
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.site}:{self.op.get('kind', '?')}"


def as_intervention(item: Intervention | Mapping[str, Any]) -> Intervention:
    """Accept dataclasses or plain dicts (as written in Python analysis code)."""
    if isinstance(item, Intervention):
        return item
    d = dict(item)
    sched = d.get("schedule")
    if isinstance(sched, Mapping):
        s = dict(sched)
        if s.get("windows") is not None:
            s["windows"] = [w if isinstance(w, Window) else Window(**w) for w in s["windows"]]
        if isinstance(s.get("until"), Mapping):
            s["until"] = MetricCondition(**s["until"])
        d["schedule"] = Schedule(**s)
    elif sched is None:
        d.pop("schedule", None)
    valid = set(Intervention.__dataclass_fields__)
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ValueError(f"intervention got unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    return Intervention(**d)


@dataclass
class Bound:
    """An intervention resolved against a model."""

    index: int
    spec: Intervention
    op: Op
    targets: list[tuple[Site, int | None]]


def _selection_overlaps(a: Bound, b: Bound) -> bool:
    def overlap(x: list[int] | None, y: list[int] | None) -> bool:
        return x is None or y is None or bool(set(x) & set(y))

    heads_a = {(s.name, h) for s, h in a.targets}
    for s, h in b.targets:
        if any(n == s.name and (h is None or ha is None or h == ha) for n, ha in heads_a):
            return overlap(a.spec.positions, b.spec.positions) and overlap(a.spec.features, b.spec.features)
    return False


def _time_overlaps(a: Schedule, b: Schedule) -> bool:
    (s1, e1), (s2, e2) = a.bounds(), b.bounds()
    return s1 < e2 and s2 < e1


def load_reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (and hyper-parameters, if the file has them) from a Lightning checkpoint, a
    ``state_dict`` file, or a safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    hparams = obj.get("hyper_parameters", {}) if isinstance(obj, dict) else {}
    if any(k.startswith("model.") for k in state):  # TrainingModule wraps the transformer as `.model`
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state, dict(hparams or {})


def check_reference_architecture(model: nn.Module, hparams: Mapping[str, Any], origin: str) -> None:
    """Catch architectures whose weights have the same shapes but a different meaning (e.g. 4 heads
    of 16 vs 8 heads of 8 dims), which the shape check alone cannot see."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, TransformerConfig) or "transformer" not in hparams or "task" not in hparams:
        return
    task = hparams["task"]
    ref = TransformerConfig(**hparams["transformer"]).resolved(
        d_vocab=task.get("d_vocab", 0), n_ctx=task.get("n_ctx", 0), d_feature=task.get("d_feature", 0), d_out=task.get("d_out", 0)
    )
    diffs = [f"{k}={v!r} in the reference vs {getattr(cfg, k)!r} in the model" for k, v in asdict(ref).items() if k not in ("init", "init_std") and v != getattr(cfg, k)]
    if diffs:
        raise ValueError(f"reference {origin!r} has a different architecture: " + "; ".join(diffs))


def build_reference(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> nn.Module:
    """A frozen copy of ``model``'s architecture carrying ``state``; a mismatch names the parameter."""
    ref = copy.deepcopy(model)
    ref.__dict__.pop("_site_cache", None)
    for m in ref.modules():
        if isinstance(m, Site):
            m.clear_hooks()
    own = ref.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"reference {origin!r} does not fit this model: missing parameters {missing[:8]}, unexpected parameters {unexpected[:8]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"reference {origin!r} does not fit this model: parameter {k!r} has shape {list(state[k].shape)} in the reference and {list(v.shape)} in the model")
    ref.load_state_dict(state)
    ref.eval().requires_grad_(False)
    return ref


class InterventionEngine:
    """Applies a list of interventions to a site model.

    Typical use: ``engine.set_mode('train'); engine.update(step, metrics)`` before each forward;
    ``engine.detach()`` at the end. ``update(None)`` turns every intervention fully on (analysis).
    """

    def __init__(self, model: nn.Module, interventions: Sequence[Intervention | Mapping[str, Any]], seed: int = 0) -> None:
        if not hasattr(model, "resolve_sites"):
            raise TypeError(f"{type(model).__name__} exposes no named sites (expected a models.SiteModelMixin)")
        self.model = model
        self.seed = seed
        self.bound: list[Bound] = []
        for i, item in enumerate(interventions):
            spec = as_intervention(item)
            where = f"intervention {i} ({spec.label})"
            try:
                targets = model.resolve_sites(spec.site)
                op = make_op(spec.op)
                spec.schedule.validate(f"{where}.schedule")
            except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
                msg = e.args[0] if e.args else str(e)
                raise type(e)(f"{where}: {msg}") from None
            bad_modes = sorted(set(spec.during) - set(MODES))
            if bad_modes:
                raise ValueError(f"{where}: unknown `during` value(s) {bad_modes}; valid: {list(MODES)}")
            self._check_indices(spec, targets, where, getattr(getattr(model, "cfg", None), "n_ctx", 0))
            self.bound.append(Bound(i, spec, op, targets))
        self._check_conflicts()
        labels = [b.spec.label for b in self.bound]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"intervention names must be unique; duplicated: {dup} (set `name:` to tell them apart)")
        self.references: dict[str, nn.Module] = {}
        self.state: dict[str, dict[str, Any]] = {b.spec.label: {} for b in self.bound}
        self.released: dict[str, int] = {}
        self.alphas: dict[str, float] = {b.spec.label: 0.0 for b in self.bound}
        self.mode = "train"
        self.step: int | None = 0
        self.generator = torch.Generator()
        self._removers: list[Any] = []
        self._attached_key: tuple | None = None
        self._sources: dict[str, dict[str, torch.Tensor]] = {}
        self._busy = False
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_indices(spec: Intervention, targets: list[tuple[Site, int | None]], where: str, n_ctx: int = 0) -> None:
        for site, _ in targets:
            info = site.info
            if spec.positions is not None:
                if info.pos_dim is None:
                    raise ValueError(f"{where}: site {site.name} has no position axis (dims {info.dims}); drop `positions`")
                bad = [p for p in spec.positions if n_ctx and not -n_ctx <= p < n_ctx]
                if bad:
                    raise ValueError(f"{where}: positions {bad} out of range for a context of {n_ctx} (valid: {-n_ctx}..{n_ctx - 1})")
            if spec.features is not None:
                last = info.dims[-1]
                size = info.sizes.get(last)
                if size is not None:
                    bad = [f for f in spec.features if not -size <= f < size]
                    if bad:
                        raise ValueError(f"{where}: features {bad} out of range for site {site.name} axis {last!r} of size {size}")

    def _check_conflicts(self) -> None:
        for i, a in enumerate(self.bound):
            for b in self.bound[i + 1 :]:
                if not (a.op.replaces and b.op.replaces):
                    continue
                if _selection_overlaps(a, b) and _time_overlaps(a.spec.schedule, b.spec.schedule) and set(a.spec.during) & set(b.spec.during):
                    raise ValueError(
                        f"conflicting interventions: {a.spec.label!r} ({a.op.kind}) and {b.spec.label!r} ({b.op.kind}) both "
                        f"replace overlapping parts of {a.spec.site!r} / {b.spec.site!r} in overlapping step windows "
                        f"{a.spec.schedule.bounds()} and {b.spec.schedule.bounds()}; narrow their heads, positions, "
                        "features or schedules, or combine them into one"
                    )

    # ------------------------------------------------------------------ references
    def reference_keys(self) -> list[str]:
        return sorted({b.op.reference for b in self.bound if b.op.source == "reference"})  # type: ignore[attr-defined]

    def load_references(self, init_state: Mapping[str, torch.Tensor] | None = None, device: torch.device | str | None = None) -> None:
        """Build every reference model once (shared by all the sites that read it)."""
        for key in self.reference_keys():
            if key in self.references:
                continue
            if key == "init":
                state = init_state if init_state is not None else self.model.state_dict()
            else:
                state, hparams = load_reference_state(key)
                check_reference_architecture(self.model, hparams, key)
            self.references[key] = build_reference(self.model, state, key)
        if device is not None:
            for ref in self.references.values():
                ref.to(device)

    # ------------------------------------------------------------------ schedule
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}; valid: {list(MODES)}")
        self.mode = mode
        self._refresh()

    def observe(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        """Latch ``until`` releases whose metric crossed its threshold."""
        if not metrics:
            return
        for b in self.bound:
            cond = b.spec.schedule.until
            label = b.spec.label
            if cond is None or label in self.released or cond.metric not in metrics:
                continue
            if cond.crossed(float(metrics[cond.metric])):
                self.released[label] = step

    def update(self, step: int | None, metrics: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Recompute every alpha for optimizer step ``step`` (None: all fully on) and re-attach hooks."""
        self.step = step
        if step is not None:
            self.observe(step, metrics)
        for b in self.bound:
            s = b.spec.schedule
            self.alphas[b.spec.label] = s.strength if step is None else s.alpha(step, self.released.get(b.spec.label))
        seed_key = hashlib.blake2b(f"{self.seed}:{step}:{self.mode}".encode(), digest_size=8).digest()
        self.generator.manual_seed(int.from_bytes(seed_key, "little") & (2**63 - 1))
        self._refresh()
        return dict(self.alphas)

    def _live(self) -> list[Bound]:
        return [b for b in self.bound if self.alphas[b.spec.label] > 0 and self.mode in b.spec.during]

    # ------------------------------------------------------------------ hooks
    def _refresh(self) -> None:
        live = self._live()
        key = tuple(b.index for b in live)
        if key == self._attached_key:
            return
        self._remove_hooks()
        by_site: dict[str, tuple[Site, list[tuple[Bound, int | None]]]] = {}
        for b in live:
            for site, head in b.targets:
                entries = by_site.setdefault(site.name, (site, []))[1]
                if head is not None and entries and entries[-1][0] is b:
                    # one intervention over several heads of a site (``head*``) is applied once with the
                    # union of the heads: one pass over the tensor instead of one per head, and for
                    # grad_only the only correct choice (per head, each pass would detach the others)
                    prev = entries[-1][1]
                    entries[-1] = (b, (*(prev if isinstance(prev, tuple) else (prev,)), head))
                    continue
                entries.append((b, head))
        for site, entries in by_site.values():
            self._removers.append(site.add_hook(self._make_hook(entries)))
        if any(b.op.source for b in live):
            self._removers.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True).remove)
        self._attached_key = key

    def _remove_hooks(self) -> None:
        for r in self._removers:
            r()
        self._removers = []
        self._attached_key = None

    def detach(self) -> None:
        """Remove every hook (the model is left exactly as it was)."""
        self._remove_hooks()
        self._sources = {}

    def _mask(self, site: Site, head: int | tuple[int, ...] | None, spec: Intervention, x: torch.Tensor) -> torch.Tensor:
        key = (site.name, head, spec.label, tuple(x.shape[1:]), x.device, x.dtype)
        m = self._mask_cache.get(key)
        if m is None:
            info = site.info
            m = torch.ones((1,) * x.dim(), device=x.device, dtype=x.dtype)
            if head is not None and info.head_dim is not None:
                m = m * self._axis_mask(x, info.head_dim, list(head) if isinstance(head, tuple) else [head])
            if spec.positions is not None and info.pos_dim is not None:
                m = m * self._axis_mask(x, info.pos_dim, spec.positions)
            if spec.features is not None:
                m = m * self._axis_mask(x, x.dim() - 1, spec.features)
            self._mask_cache[key] = m
        return m

    @staticmethod
    def _axis_mask(x: torch.Tensor, dim: int, index: list[int]) -> torch.Tensor:
        size = x.shape[dim]
        bad = [i for i in index if not -size <= i < size]
        if bad:
            raise ValueError(f"indices {bad} out of range for an axis of size {size}")
        v = torch.zeros(size, device=x.device, dtype=x.dtype)
        v[torch.tensor([i % size for i in index], device=x.device)] = 1
        shape = [1] * x.dim()
        shape[dim] = size
        return v.view(shape)

    def _make_hook(self, entries: list[tuple[Bound, int | None]]):
        def hook(x: torch.Tensor, site: Site) -> torch.Tensor | None:
            if self._busy:
                return None
            for b, head in entries:
                alpha = self.alphas[b.spec.label]
                src = None
                if b.op.source == "reference":
                    src = self._sources.get(b.op.reference, {}).get(site.name)  # type: ignore[attr-defined]
                elif b.op.source == "patch":
                    src = self._sources.get("patch:" + b.op.transform, {}).get(site.name)  # type: ignore[attr-defined]
                ctx = OpContext(site, head, self.mode, self.generator, self.state[b.spec.label], src)
                m = self._mask(site, head, b.spec, x) * alpha
                x = b.op.apply(x, m, ctx)
            return x

        return hook

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Run the reference models and patched inputs once, caching only the sites that read them."""
        if self._busy:
            return None
        needs: dict[str, set[str]] = {}
        for b in self._live():
            if b.op.source == "reference":
                key = b.op.reference  # type: ignore[attr-defined]
            elif b.op.source == "patch":
                key = "patch:" + b.op.transform  # type: ignore[attr-defined]
            else:
                continue
            needs.setdefault(key, set()).update(s.name for s, _ in b.targets)
        self._sources = {}
        self._busy = True
        try:
            for key, names in needs.items():
                if key.startswith("patch:"):
                    p_args, p_kwargs = get_transform(key[len("patch:") :])(args, kwargs, self.generator)
                    with torch.no_grad():
                        _, cache = module.run_with_cache(*p_args, names=sorted(names), **p_kwargs)
                else:
                    if key not in self.references:
                        raise RuntimeError(f"reference {key!r} is not loaded; call engine.load_references() first")
                    ref = self.references[key]
                    with torch.inference_mode():
                        _, cache = ref.run_with_cache(*args, names=sorted(names), **kwargs)
                    cache = {k: v.clone() for k, v in cache.items()}  # leave inference mode: usable in autograd
                self._sources[key] = cache
        finally:
            self._busy = False
        return None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {k: {n: (v.cpu() if isinstance(v, torch.Tensor) else v) for n, v in s.get("running_mean", {}).items()} for k, s in self.state.items()}
        return {"released": dict(self.released), "running_mean": state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.released = dict(state.get("released", {}))
        for label, means in state.get("running_mean", {}).items():
            if label in self.state and means:
                self.state[label]["running_mean"] = dict(means)


@contextmanager
def intervene(
    model: nn.Module,
    interventions: Iterable[Intervention | Mapping[str, Any]],
    *,
    step: int | None = None,
    mode: str = "analysis",
    seed: int = 0,
) -> Iterator[InterventionEngine]:
    """``with intervene(model, [...]):`` apply interventions for the block (all fully on unless ``step``)."""
    engine = InterventionEngine(model, list(interventions), seed=seed)
    engine.load_references()
    engine.mode = mode
    engine.update(step)
    try:
        yield engine
    finally:
        engine.detach()
