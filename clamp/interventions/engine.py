"""The engine: binds interventions to a model's sites and applies them on every forward.

Order of application (documented, deterministic): on each site, interventions run in the order
they were listed; each sees the output of the previous one. Sites run in forward order.

Where a replacement value comes from is the op's business, through one context (``OpContext``):
the activation itself, the current batch (``ctx.field``), other sites of the same forward that come
earlier (``ctx.read``), or a second forward — a frozen reference model, or the *current* model on the
same or a transformed input under its own nested interventions (``patch``, ``construct.read_from``).
``grad`` decides whether the value keeps its graph (clamps built from the model's own activations
can stay differentiable) or is a constant for the optimizer.

Cost model: hooks are attached only while at least one intervention on that site has a
non-zero alpha in the current mode, so an idle engine leaves the model exactly as it is (fused
attention kernel included); sites are recorded for ``ctx.read`` only when a live op declared them.
Reference models and second passes are computed once per forward of the main model, in a forward
pre-hook, for all the sites that read them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from clamp.interventions.ops import Op, OpContext, PassSpec, make_op, unpickling_reason
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
        grad: whether the replacement value carries gradient into the parameters that produced it
            (values built from the model's own activations: mean, resample, construct, patch). Default
            (null) as before: values are constants for the optimizer.
    """

    site: str
    op: dict[str, Any]
    schedule: Schedule = field(default_factory=Schedule)
    positions: list[int] | None = None
    features: list[int] | None = None
    during: list[str] = field(default_factory=lambda: ["train", "val", "analysis"])
    name: str | None = None
    grad: bool | None = None

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
    grad: bool = False
    reads: list[str] = field(default_factory=list)  # sites read through ctx.read
    fields: list[str] = field(default_factory=list)  # batch fields the value needs
    pass_spec: PassSpec | None = None  # the second pass of the current model the value reads
    pass_key: str | None = None
    nested: InterventionEngine | None = None  # applies the pass's own interventions


def _selection_overlaps(a: Bound, b: Bound) -> bool:
    def overlap(x: list[int] | None, y: list[int] | None) -> bool:
        return x is None or y is None or bool(set(x) & set(y))

    heads_a = {(s.name, h) for s, h in a.targets}
    for s, h in b.targets:
        if any(n == s.name and (h is None or ha is None or h == ha) for n, ha in heads_a):
            return overlap(a.spec.positions, b.spec.positions) and overlap(a.spec.features, b.spec.features)
    return False


def _time_overlaps(a: Schedule, b: Schedule) -> bool:
    return a.overlaps(b)


def load_reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (and hyper-parameters, if the file has them) from a Lightning checkpoint, a
    ``state_dict`` file, or a safetensors file (hyper-parameters as JSON in its metadata).

    Loading is safe: ``torch.load(weights_only=True)`` refuses pickled code, so a planted file can
    not run anything; a file that is not a checkpoint fails with its path in the message.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"reference checkpoint {str(path)!r} is a directory, not a checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                meta = f.metadata() or {}
            hparams = json.loads(meta["hyper_parameters"]) if "hyper_parameters" in meta else {}
            return state, hparams
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"reference checkpoint {str(path)!r} holds Python objects besides tensors and was refused by the safe "
            f"loader (torch.load weights_only=True: {unpickling_reason(e)}); save plain weights (a state_dict or .safetensors)"
        ) from None
    except Exception as e:  # truncated / corrupt / not a checkpoint at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else "corrupt file"
        raise ValueError(f"reference checkpoint {str(path)!r} could not be read ({type(e).__name__}: {first})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"reference checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict or a Lightning checkpoint")
    state = obj.get("state_dict", obj)
    hparams = obj.get("hyper_parameters", {})
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"reference checkpoint {str(path)!r} is not a state_dict of tensors")
    if any(k.startswith("model.") for k in state):  # TrainingModule wraps the transformer as `.model`
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return dict(state), dict(hparams or {})


def check_reference_architecture(model: nn.Module, hparams: Mapping[str, Any], origin: str) -> None:
    """Catch architectures whose weights have the same shapes but a different meaning (e.g. 4 heads
    of 16 vs 8 heads of 8 dims), which the shape check alone cannot see."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, TransformerConfig):
        return
    if "transformer" not in hparams or "task" not in hparams:
        rank_zero_warn(
            f"reference {origin!r} carries no architecture config (a bare state_dict or .safetensors): only parameter "
            "shapes can be checked, not e.g. the number of heads. Prefer the reference run's Lightning .ckpt"
        )
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


class _SitesRead(Exception):
    """Raised by :func:`_read_sites` once every wanted site has been read, to end the forward there."""


def _read_sites(model: nn.Module, args: tuple, kwargs: dict, names: set[str]) -> dict[str, torch.Tensor]:
    """Forward ``model`` only as far as the last site in ``names`` and return those activations:
    nothing later in the forward can change them (a clamp on layer 0 skips the reference's layer 1)."""
    cache: dict[str, torch.Tensor] = {}

    def read(x: torch.Tensor, site: Site) -> None:
        cache[site.name] = x.detach()
        if len(cache) == len(names):
            raise _SitesRead

    try:
        with model.hooks([(n, read) for n in sorted(names)]):  # type: ignore[operator]
            model(*args, **kwargs)
    except _SitesRead:
        pass
    return cache


def zero_missing_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Give trainable parameters that got no gradient a zero one (what an uncut graph gives them)."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


class InterventionEngine:
    """Applies a list of interventions to a site model.

    Typical use: ``engine.set_mode('train'); engine.update(step, metrics)`` before each forward;
    ``engine.detach()`` at the end. ``update(None)`` turns every intervention fully on (analysis).
    """

    def __init__(
        self,
        model: nn.Module,
        interventions: Sequence[Intervention | Mapping[str, Any]],
        seed: int = 0,
        *,
        held: Sequence[str] = (),
        _nested_in: str | None = None,
    ) -> None:
        if not hasattr(model, "resolve_sites"):
            raise TypeError(f"{type(model).__name__} exposes no named sites (expected a models.SiteModelMixin)")
        self.model = model
        self.seed = seed
        self.bound: list[Bound] = []
        self.references: dict[str, nn.Module] = {}
        # labels kept off (alpha 0) and out of the conflict rule until :meth:`rebind` gives their final
        # sites: interventions on heads chosen by role, bound to stand-in heads until measured
        self.held: set[str] = set(held)
        for i, item in enumerate(interventions):
            self.bound.append(self._bind(i, item, _nested_in))
        self._check_conflicts()
        labels = [b.spec.label for b in self.bound]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"intervention names must be unique; duplicated: {dup} (set `name:` to tell them apart)")
        self.state: dict[str, dict[str, Any]] = {b.spec.label: {} for b in self.bound}
        self.released: dict[str, int] = {}
        self.alphas: dict[str, float] = {b.spec.label: 0.0 for b in self.bound}
        self.mode = "train"
        self.step: int | None = 0
        self.generator = torch.Generator()
        self.batch: Mapping[str, Any] | None = None
        self._removers: list[Any] = []
        self._attached_key: tuple | None = None
        self._sources: dict[str, dict[str, torch.Tensor]] = {}
        self._record: dict[str, torch.Tensor] = {}
        self._busy = False
        self._mask_cache: dict[tuple, tuple[torch.Tensor, bool]] = {}
        # set when a forward replaced a whole activation without graph through it; parameters
        # upstream of it may then have no gradient at all (see fill_missing_grads)
        self.graph_cut = False

    # ------------------------------------------------------------------ validation
    def _bind(self, i: int, item: Intervention | Mapping[str, Any], nested_in: str | None) -> Bound:
        """Resolve and validate one intervention (a nested second pass gets its own engine)."""
        model = self.model
        prefix = f"{nested_in}[{i}]" if nested_in else f"intervention {i}"
        try:
            spec = as_intervention(item)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{prefix}: {e.args[0] if e.args else e}") from None
        where = f"{prefix} ({spec.label})"
        try:
            targets = model.resolve_sites(spec.site)
            op = make_op(spec.op)
            spec.schedule.validate("schedule")
            grad = self._check_grad(spec, op)
            reads, fields, pass_spec = op.read_sites(), op.needed_fields(), op.second_pass()
            bad_modes = sorted(set(spec.during) - set(MODES))
            if bad_modes:
                raise ValueError(f"unknown `during` value(s) {bad_modes}; valid: {list(MODES)}")
            n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", 0)
            self._check_indices(spec, targets, n_ctx)
            self._check_op_on_sites(op, targets, n_ctx)
        except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
            msg = e.args[0] if e.args else str(e)
            raise type(e)(msg if msg.startswith(where) else f"{where}: {msg}") from None
        if nested_in and (spec.schedule != Schedule() or sorted(spec.during) != sorted(MODES)):
            raise ValueError(f"{where}: an intervention of a second pass applies whenever the pass runs; give `schedule` and `during` to the outer intervention")
        if nested_in and getattr(op, "over", None) == "running":
            raise ValueError(f"{where}: a running mean inside a second pass would not be checkpointed; use `over: batch` or `batch_pos`")
        self._check_reads(reads, targets, pass_spec, {name: j for j, name in enumerate(model.site_map())}, where)
        b = Bound(i, spec, op, targets, grad, reads, fields, pass_spec)
        if pass_spec is not None:
            field_name = "interventions" if op.kind == "patch" else "read_from.interventions"
            b.nested = InterventionEngine(model, pass_spec.interventions, self.seed, _nested_in=f"{where}.op.{field_name}")
            b.nested.references = self.references  # one copy of each reference model, however deep
            b.pass_key = pass_spec.key(grad)
            if pass_spec.transform != "identity" and b.nested.needed_fields():
                raise ValueError(
                    f"{where}: its second pass transforms the input ({pass_spec.transform!r}), so batch fields "
                    f"{b.nested.needed_fields()} needed by its nested interventions would not describe it; use transform: identity"
                )
        return b

    @staticmethod
    def _check_grad(spec: Intervention, op: Op) -> bool:
        if spec.grad is None:
            return False
        if not isinstance(spec.grad, bool):
            raise ValueError(f"grad must be true or false, got {spec.grad!r}")
        if op.grad_kind == "x":
            raise ValueError(f"grad applies to replacement values; `{op.kind}` keeps the activation's own gradient (stop it with a `freeze` intervention); drop `grad`")
        if op.grad_kind == "constant" and spec.grad:
            raise ValueError(f"grad: true has no effect on a `{op.kind}` value (it does not depend on this model's parameters); drop `grad`")
        return spec.grad

    def _check_reads(self, reads: list[str], targets: list[tuple[Site, int | None]], pass_spec: PassSpec | None, order: dict[str, int], where: str) -> None:
        for name in reads:
            if name not in order:
                raise ValueError(f"{where}: reads unknown site {name!r}; this model's sites are:\n{self.model.describe_sites()}")
            if pass_spec is not None:
                continue  # a second pass has run completely before this forward: any site can be read
            for site, _ in targets:
                if order[name] >= order[site.name]:
                    earlier = [n for n, i in order.items() if i < order[site.name]]
                    raise ValueError(
                        f"{where}: reads site {name!r}, which {'is its own target' if name == site.name else 'comes after its target ' + repr(site.name)} "
                        f"in the forward; it can read only earlier sites ({', '.join(earlier) or 'none'}), or read any site "
                        "from a second pass with `read_from: {transform: identity}`"
                    )

    def needed_fields(self, live: bool = False) -> list[str]:
        """Batch fields the interventions (or their nested ones) need; ``live``: only those active now."""
        bound = self._live() if live else self.bound
        out = [f for b in bound for f in b.fields]
        out += [f for b in bound if b.nested is not None and b.pass_spec is not None and b.pass_spec.transform == "identity" for f in b.nested.needed_fields()]
        return sorted(set(out))

    @staticmethod
    def _check_indices(spec: Intervention, targets: list[tuple[Site, int | None]], n_ctx: int = 0) -> None:
        for field_name, index in (("positions", spec.positions), ("features", spec.features)):
            if index is not None and not index:
                raise ValueError(f"`{field_name}` is empty, so it would select nothing; list at least one index or drop `{field_name}`")
        for site, _ in targets:
            info = site.info
            if spec.positions is not None:
                if info.pos_dim is None:
                    raise ValueError(f"`positions`: site {site.name} has no position axis (dims {info.dims}); drop `positions`")
                bad = [p for p in spec.positions if n_ctx and not -n_ctx <= p < n_ctx]
                if bad:
                    raise ValueError(f"`positions` {bad} out of range for a context of {n_ctx} (valid: {-n_ctx}..{n_ctx - 1})")
            if spec.features is not None:
                last = info.dims[-1]
                size = n_ctx if last in ("pos", "q_pos", "k_pos") else info.sizes.get(last)
                if size:
                    bad = [f for f in spec.features if not -size <= f < size]
                    if bad:
                        raise ValueError(f"`features` {bad} out of range for site {site.name} axis {last!r} of size {size} (valid: {-size}..{size - 1})")

    @staticmethod
    def _check_op_on_sites(op: Op, targets: list[tuple[Site, int | None]], n_ctx: int) -> None:
        """Shape checks that need the site (e.g. a ``constant`` tensor), with a full context of ``n_ctx``."""
        if not n_ctx:
            return
        for site, head in targets:
            try:
                shape = site.info.expected_shape(2, n_ctx)
            except KeyError:  # a size only known at forward time
                continue
            op.check_site(OpContext(site, head, "train", torch.Generator(), {}), shape)

    def rebind(self, specs: Mapping[str, Intervention]) -> None:
        """Bind new specs in place of the interventions of the same labels (heads chosen by role, once
        measured) and release them from ``held``; state, releases and references are kept."""
        self._remove_hooks()
        for j, b in enumerate(self.bound):
            if b.spec.label in specs:
                if b.nested is not None:
                    b.nested.detach()
                self.bound[j] = self._bind(b.index, specs[b.spec.label], None)
                self.held.discard(b.spec.label)
        self._mask_cache.clear()
        self._check_conflicts()

    def _check_conflicts(self) -> None:
        for i, a in enumerate(self.bound):
            for b in self.bound[i + 1 :]:
                if a.spec.label in self.held or b.spec.label in self.held:
                    continue
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
    def _reference_users(self, key: str) -> list[str]:
        out = [b.spec.label for b in self.bound if getattr(b.op, "reference", None) == key]
        return out + [f"{b.spec.label} > {u}" for b in self.bound if b.nested is not None for u in b.nested._reference_users(key)]

    def reference_keys(self) -> list[str]:
        keys = {b.op.reference for b in self.bound if b.op.source == "reference"}  # type: ignore[attr-defined]
        keys |= {k for b in self.bound if b.nested is not None for k in b.nested.reference_keys()}
        return sorted(keys)

    def load_references(
        self, init_state: Mapping[str, torch.Tensor] | None = None, device: torch.device | str | None = None, keys: Sequence[str] | None = None
    ) -> None:
        """Build every reference model (or those in ``keys``) once, shared by all the sites that read it;
        errors name the file and the interventions that read it."""
        for key in self.reference_keys() if keys is None else keys:
            if key in self.references:
                continue
            try:
                if key == "init":
                    state = init_state if init_state is not None else self.model.state_dict()
                else:
                    state, hparams = load_reference_state(key)
                    check_reference_architecture(self.model, hparams, key)
                self.references[key] = build_reference(self.model, state, key)
            except (ValueError, FileNotFoundError) as e:
                users = ", ".join(repr(label) for label in self._reference_users(key))
                raise type(e)(f"intervention {users}: {e}" if users else str(e)) from None
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
            if b.spec.label in self.held:
                self.alphas[b.spec.label] = 0.0
                continue
            self.alphas[b.spec.label] = s.strength if step is None else s.alpha(step, self.released.get(b.spec.label))
        seed_key = hashlib.blake2b(f"{self.seed}:{step}:{self.mode}".encode(), digest_size=8).digest()
        self.generator.manual_seed(int.from_bytes(seed_key, "little") & (2**63 - 1))
        self._refresh()
        return dict(self.alphas)

    def _live(self) -> list[Bound]:
        return [b for b in self.bound if self.alphas[b.spec.label] > 0 and self.mode in b.spec.during]

    # ------------------------------------------------------------------ batch
    def set_batch(self, batch: Mapping[str, Any] | None) -> None:
        """The batch the next forwards run on (``ctx.batch`` of batch-aware ops)."""
        self.batch = batch

    @contextmanager
    def using_batch(self, batch: Mapping[str, Any] | None) -> Iterator[None]:
        previous, self.batch = self.batch, batch
        try:
            yield
        finally:
            self.batch = previous

    def _check_batch(self, live: list[Bound], args: tuple) -> None:
        need = {f: b.spec.label for b in live for f in b.fields}
        for b in live:
            if b.nested is not None and b.pass_spec is not None and b.pass_spec.transform == "identity":
                need.update({f: b.spec.label for f in b.nested.needed_fields() if f not in need})
        if not need:
            return
        if self.batch is None:
            raise ValueError(
                f"interventions {sorted(set(need.values()))} need the batch (fields {sorted(need)}) but none was given; "
                "ClampCallback gives it in training and validation; in Python use clamp.intervene(model, [...], batch=batch)"
            )
        missing = sorted(f for f in need if f not in self.batch)
        if missing:
            raise ValueError(f"interventions {sorted({need[f] for f in missing})} need batch field(s) {missing}; this batch has {sorted(self.batch)}")
        tokens, given = (args[0] if args else None), self.batch.get("tokens")
        if isinstance(tokens, torch.Tensor) and isinstance(given, torch.Tensor) and given is not tokens and given.shape != tokens.shape:
            raise ValueError(
                f"the engine's batch has tokens of shape {list(given.shape)} but this forward's input is {list(tokens.shape)}: "
                "set the batch that is being run (engine.set_batch / clamp.intervene(..., batch=...))"
            )

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
        recorded = {name for b in live if b.pass_spec is None for name in b.reads}
        for name in sorted(recorded - set(by_site)):  # sites only read, never changed
            by_site[name] = (self.model.site(name), [])
        for name, (site, entries) in by_site.items():
            self._removers.append(site.add_hook(self._make_hook(entries, record=name in recorded)))
        if any(b.op.source == "reference" or b.pass_spec is not None or b.reads or b.fields for b in live):
            self._removers.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True).remove)
            self._removers.append(self.model.register_forward_hook(self._post_forward).remove)
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
        self._record = {}
        for b in self.bound:
            if b.nested is not None:
                b.nested.detach()

    def _mask(self, site: Site, head: int | tuple[int, ...] | None, spec: Intervention, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The selection as a 0/1 tensor that broadcasts against ``x``, and whether it selects all of ``x``."""
        key = (site.name, head, spec.label, tuple(x.shape[1:]), x.device, x.dtype)
        cached = self._mask_cache.get(key)
        if cached is None:
            info = site.info
            m = torch.ones((1,) * x.dim(), device=x.device, dtype=x.dtype)
            if head is not None and info.head_dim is not None:
                m = m * self._axis_mask(x, info.head_dim, list(head) if isinstance(head, tuple) else [head])
            if spec.positions is not None and info.pos_dim is not None:
                m = m * self._axis_mask(x, info.pos_dim, spec.positions)
            if spec.features is not None:
                m = m * self._axis_mask(x, x.dim() - 1, spec.features)
            cached = self._mask_cache[key] = (m, bool((m == 1).all()))
        return cached

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

    def _make_hook(self, entries: list[tuple[Bound, int | None]], record: bool = False):
        def hook(x: torch.Tensor, site: Site) -> torch.Tensor | None:
            if self._busy:
                return None
            for b, head in entries:
                alpha = self.alphas[b.spec.label]
                src = None
                if b.op.source == "reference":
                    src = self._sources.get(b.op.reference, {}).get(site.name)  # type: ignore[attr-defined]
                elif b.op.source == "pass":
                    src = self._sources.get(b.pass_key, {}).get(site.name)  # type: ignore[arg-type]
                reader = None
                if b.reads:
                    reader = partial(self._read, b, self._sources.get(b.pass_key, {}) if b.pass_key else self._record)
                mask, covers_all = self._mask(site, head, b.spec, x)
                full = covers_all and alpha == 1 and b.op.replaces and self._may_cut_graph()
                ctx = OpContext(site, head, self.mode, self.generator, self.state[b.spec.label], src, self.batch, b.grad, reader, self.step, full)
                x = b.op.apply(x, mask if alpha == 1 else mask * alpha, ctx)
                if full and torch.is_grad_enabled():
                    self.graph_cut = True
            if record:
                self._record[site.name] = x
            return x

        def overwrites(x: torch.Tensor, site: Site) -> bool:
            """Whether the first intervention replaces all of ``x`` this step without reading it (the
            condition under which ``hook`` takes an op's ``full`` path, for an op whose value ignores x)."""
            if self._busy or not entries:
                return False
            b, head = entries[0]
            if b.op.reads_x or not b.op.replaces or self.alphas[b.spec.label] != 1 or not self._may_cut_graph():
                return False
            return self._mask(site, head, b.spec, x)[1]

        hook.overwrites = overwrites  # type: ignore[attr-defined]
        return hook

    @staticmethod
    def _may_cut_graph() -> bool:
        """Whether a full replacement may drop x's graph. Not under DDP: a parameter left with no
        gradient on one rank stalls its gradient reduction, so there x keeps its (zero) graph."""
        return not (torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)

    def fill_missing_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """After a backward through a cut graph: zero gradients for trainable parameters that got none,
        as the uncut graph gives them, so AdamW still applies weight decay and momentum to them."""
        if not self.graph_cut:
            return
        self.graph_cut = False
        zero_missing_grads(params)

    @staticmethod
    def _read(b: Bound, cache: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        if name not in cache:
            raise ValueError(
                f"intervention {b.spec.label!r} reads site {name!r}, which it did not declare "
                f"(declared: {b.reads}); list it in the op's `reads` or in the function's @declares(reads=...)"
            )
        return cache[name]

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Check the batch and run the reference models and second passes once, caching only the sites read."""
        if self._busy:
            return None
        live = self._live()
        self._record = {}
        self._check_batch(live, args)
        needs: dict[str, tuple[Bound, set[str]]] = {}
        for b in live:
            if b.op.source == "reference":
                key = b.op.reference  # type: ignore[attr-defined]
            elif b.pass_key is not None:
                key = b.pass_key
            else:
                continue
            names = needs.setdefault(key, (b, set()))[1]
            names.update(b.reads)
            if b.op.source is not None:
                names.update(s.name for s, _ in b.targets)
        self._sources = {}
        self._busy = True
        try:
            for key, (b, names) in needs.items():
                if b.pass_spec is not None:
                    p_args, p_kwargs = get_transform(b.pass_spec.transform)(args, kwargs, self.generator)
                    self._sources[key] = self._second_pass(module, b, p_args, p_kwargs, sorted(names))
                    continue
                if key not in self.references:
                    raise RuntimeError(f"reference {key!r} is not loaded; call engine.load_references() first")
                with torch.inference_mode():
                    cache = _read_sites(self.references[key], args, kwargs, names)
                self._sources[key] = {k: v.clone() for k, v in cache.items()}  # leave inference mode: usable in autograd
        finally:
            self._busy = False
        return None

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Drop this forward's second-pass and recorded activations (and their graphs) once it is done."""
        if not self._busy:
            self._sources, self._record = {}, {}

    def _second_pass(self, module: nn.Module, b: Bound, args: tuple, kwargs: dict, names: list[str]) -> dict[str, torch.Tensor]:
        """Forward the current model once more under ``b``'s nested interventions, keeping ``names``.

        With ``grad`` the activations keep their graph (the main loss then trains through this pass);
        otherwise the pass runs without autograd.
        """
        nested = b.nested
        assert nested is not None and b.pass_spec is not None
        nested.mode, nested.step, nested.generator = self.mode, self.step, self.generator
        nested.batch = self.batch if b.pass_spec.transform == "identity" else None
        for nb in nested.bound:
            nested.alphas[nb.spec.label] = nb.spec.schedule.strength
        nested._refresh()
        cache: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def read(x: torch.Tensor, _site: Site) -> None:
                cache[name] = x if b.grad else x.detach()

            return read

        removers = [module.site(n).add_hook(keep(n)) for n in names]  # type: ignore[operator]
        try:
            with nullcontext() if b.grad else torch.no_grad():
                module(*args, **kwargs)
        finally:
            for r in removers:
                r()
            nested.detach()
        return cache

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
    batch: Mapping[str, Any] | None = None,
) -> Iterator[InterventionEngine]:
    """``with intervene(model, [...]):`` apply interventions for the block (all fully on unless ``step``).

    ``batch``: the batch the block's forwards run on, for batch-aware values (``ctx.field``); change it
    with ``engine.set_batch`` when the block runs several batches.
    """
    engine = InterventionEngine(model, list(interventions), seed=seed)
    engine.batch = batch
    engine.load_references()
    engine.mode = mode
    engine.update(step)
    try:
        yield engine
    finally:
        engine.detach()
