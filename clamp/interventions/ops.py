"""Operations: what an intervention does to the selected part of a site's activation.

Every op is applied with a strength ``alpha`` through a mask ``m = alpha * selection``:

    out = x + m * (value(x) - x)          # value ops: interpolate towards a replacement

so ``alpha = 1`` replaces, ``alpha = 0`` is a no-op and ramps interpolate. Gradient ops
(``freeze``, ``grad_only``) keep the forward value and change only the backward pass.

Replacement values (zero, mean, resample, constant, construct, reference, patch) carry no gradient
by default: the clamped part of the network is cut off from learning through that path, which is
what a hand-built clamp wants. An intervention with ``grad: true`` keeps the graph of a value built
from the model's own activations (mean, resample, construct, patch: ``ctx.grad``), so the parameters
that produced it learn through the clamp, as in the paper's copy and layer-1 clamps. ``scale`` and
``noise`` keep the gradient of ``x``.

Values given by the user (``constant``, ``construct``) have the site's shape without the batch
dim, and without the head dim when one head is selected (e.g. ``[q_pos, k_pos]`` for
``layer0.head1.pattern``); they broadcast like numpy. A ``construct`` value may instead have the
site's full shape (one value per sequence, e.g. built from the batch).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pickle
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist

from models.sites import Site


@dataclass
class OpContext:
    """What an op may read besides the activation itself.

    Three ways for a value to depend on more than ``x``, all through this one context:
    ``batch`` (the current batch's fields: ``query_pos``, ``match_pos``, ``copy_src``, ``tokens``, ...),
    ``read(name)`` (another site's activation, from earlier in the same forward or from the op's
    second pass) and ``source`` (this site's activation in a reference model or a second pass).
    ``grad`` says whether the value may carry gradient into the parameters that produced it.
    """

    site: Site
    head: int | tuple[int, ...] | None  # a tuple when one intervention covers several heads (``head*``)
    mode: str  # "train", "val" or "analysis"
    generator: torch.Generator
    state: dict[str, Any]  # per-intervention persistent state (checkpointed)
    source: torch.Tensor | None = None  # full site tensor from the reference model or the second pass
    batch: Mapping[str, Any] | None = None
    grad: bool = False
    reader: Callable[[str], torch.Tensor] | None = field(default=None, repr=False)
    step: int | None = None  # optimizer step (the micro-batches of one accumulated step share it)
    # the mask selects all of x at alpha 1: a replacing op returns its value alone, with no graph
    # through x (x's coefficient would be 0), so backward skips what produced x (see Op.apply)
    full: bool = False

    def read(self, name: str) -> torch.Tensor:
        """The activation of site ``name`` (as its own interventions left it); detached unless ``grad``."""
        if self.reader is None:
            raise ValueError(f"site {self.site.name}: this op reads no other site (declare it in the op's `reads`)")
        v = self.reader(name)
        return v if self.grad else v.detach()

    def field(self, name: str) -> torch.Tensor:
        """A field of the current batch, with an error naming what is missing."""
        if self.batch is None:
            raise ValueError(
                f"site {self.site.name}: needs the batch field {name!r} but no batch was given "
                "(ClampCallback gives it in training and validation; in Python use clamp.intervene(model, [...], batch=batch))"
            )
        if name not in self.batch:
            raise ValueError(f"site {self.site.name}: the batch has no field {name!r}; it has {sorted(self.batch)}")
        return self.batch[name]


class Op:
    """Base class. ``value`` gives the replacement; ``apply`` mixes it in through the mask."""

    kind: ClassVar[str]
    replaces: ClassVar[bool] = True  # replacing ops on overlapping selections conflict
    reads_x: ClassVar[bool] = True  # False: the value uses x's shape only (a model may skip computing x)
    source: ClassVar[str | None] = None  # "reference" or "pass" when the op reads another forward
    # whether `grad: true` means something: "value" (the value can depend on parameters), "constant"
    # (it cannot: zero, constant, a frozen reference) or "x" (the op keeps x's own gradient: scale, noise, ...)
    grad_kind: ClassVar[str] = "value"

    def validate(self) -> None:
        """Check parameter values before training starts (types are checked by :func:`make_op`)."""

    def check_site(self, ctx: OpContext, shape: tuple[int, ...]) -> None:
        """Check the op against one bound site before training; ``shape`` is the site's full shape."""

    def read_sites(self) -> list[str]:
        """Sites whose activations the value reads through ``ctx.read``."""
        return []

    def needed_fields(self) -> list[str]:
        """Batch fields the value needs (checked before each forward)."""
        return []

    def second_pass(self) -> PassSpec | None:
        """The second forward of the current model the value comes from, if any."""
        return None

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        v = self.value(x if ctx.grad else x.detach(), ctx)
        if not ctx.grad:
            v = v.detach()
        if ctx.full:  # exactly the value (x + (v - x) is v only up to rounding, and NaN where x is -inf)
            return _full_like(v.to(x.dtype), x)
        return x + m * (v.to(x.dtype) - x)


def _full_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` broadcast to ``x``'s shape as a tensor of its own (later ops may write into activations)."""
    return v if v.shape == x.shape else v.expand(x.shape).contiguous()


@dataclass
class PassSpec:
    """A second forward of the *current* model: on the same input (``transform: identity``) or a
    transformed one, under its own (nested) list of interventions. It runs once per main forward,
    before it, shared by every op with the same pass; with ``grad`` its activations keep their graph."""

    transform: str = "identity"
    interventions: list[Any] = field(default_factory=list)

    def validate(self, where: str) -> None:
        from clamp.interventions.transforms import get_transform

        try:
            get_transform(self.transform)
        except ValueError as e:
            raise ValueError(f"{where}.transform: {e}") from None
        if not isinstance(self.interventions, list):
            raise ValueError(f"{where}.interventions must be a list of interventions, got {type(self.interventions).__name__}")

    def key(self, grad: bool) -> str:
        import json

        nested = json.dumps([_plain(i) for i in self.interventions], sort_keys=True, default=str)
        return f"pass:{self.transform}:{nested}:{'grad' if grad else 'nograd'}"


def _plain(item: Any) -> Any:
    return dataclasses.asdict(item) if dataclasses.is_dataclass(item) and not isinstance(item, type) else item


@dataclass
class Zero(Op):
    """Zero-ablation."""

    kind: ClassVar[str] = "zero"
    grad_kind: ClassVar[str] = "constant"
    reads_x: ClassVar[bool] = False

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return torch.zeros_like(x) if ctx.full else x * (1 - m)


@dataclass
class Scale(Op):
    """Multiply by a gain ``k`` (k=0 ablates, k>1 excites); gradient flows through ``x``."""

    kind: ClassVar[str] = "scale"
    replaces: ClassVar[bool] = False
    grad_kind: ClassVar[str] = "x"
    k: float = field(kw_only=True)  # required: a scale without a gain would silently do nothing

    def validate(self) -> None:
        if not math.isfinite(self.k):  # an infinite gain makes the activation (and the loss) inf/nan at the first step
            raise ValueError(f"op 'scale' field `k`={self.k}: must be a finite number")

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return x * (1 + m * (self.k - 1))


@dataclass
class Noise(Op):
    """Add Gaussian noise of standard deviation ``std`` (scaled by alpha)."""

    kind: ClassVar[str] = "noise"
    replaces: ClassVar[bool] = False
    grad_kind: ClassVar[str] = "x"
    std: float = 1.0

    def validate(self) -> None:
        if not (math.isfinite(self.std) and self.std >= 0):
            raise ValueError(f"op 'noise' field `std`={self.std}: must be a finite number >= 0")

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        eps = torch.randn(x.shape, generator=ctx.generator, device="cpu", dtype=torch.float32)
        return x + m * (self.std * eps.to(device=x.device, dtype=x.dtype))


@dataclass
class Mean(Op):
    """Mean-ablation. ``over``: 'batch' (per position), 'batch_pos' (over batch and positions),
    or 'running' (an exponential moving average of the batch mean over training, updated on
    training forwards only, averaged across ranks under DDP, and checkpointed; before the first
    training forward it falls back to the batch mean)."""

    kind: ClassVar[str] = "mean"
    over: Literal["batch", "batch_pos", "running"] = "batch"
    momentum: float = 0.01

    def validate(self) -> None:
        if not 0 < self.momentum <= 1:
            raise ValueError(f"op 'mean' field `momentum`={self.momentum}: must be in (0, 1]")

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        xd = x.float()  # detached by ``apply`` unless the intervention keeps gradients
        if self.over == "batch":
            return xd.mean(0, keepdim=True)
        if self.over == "batch_pos":
            pos = ctx.site.info.pos_dim
            return xd.mean(dim=(0, pos), keepdim=True) if pos is not None else xd.mean(0, keepdim=True)
        # one EMA per (site, head): a `head*` selector calls the op once per head on the same forward
        heads = ctx.head if isinstance(ctx.head, tuple) else (ctx.head,)
        key = ctx.site.name if ctx.head is None else f"{ctx.site.name}.head{','.join(map(str, heads))}"
        run = ctx.state.setdefault("running_mean", {})
        if ctx.mode == "train":
            batch_mean = xd.mean(0)
            mean = batch_mean.detach()
            if dist.is_available() and dist.is_initialized():
                mean = mean.clone()
                dist.all_reduce(mean)
                mean /= dist.get_world_size()
            # one EMA update per optimizer step: the micro-batches of an accumulated step (same ``ctx.step``)
            # are averaged first, so accumulate_grad_batches does not change the statistic
            step_state = ctx.state.setdefault("_step_mean", {})  # transient, not checkpointed
            base_step, base, acc, n = step_state.get(key, (None, None, None, 0))
            if base_step != ctx.step or ctx.step is None:
                base, acc, n = run.get(key), mean, 1
            else:
                n += 1
                acc = acc + (mean - acc) / n
            step_state[key] = (ctx.step, base, acc, n)
            share = (1.0 if base is None else self.momentum) / n
            run[key] = acc if base is None else base.to(acc) + self.momentum * (acc - base.to(acc))
            # the value is the (rank-identical) average; with `grad: true` the current batch's share keeps its gradient
            return (run[key] + share * (batch_mean - mean))[None] if batch_mean.requires_grad else run[key][None]
        if key not in run:  # evaluated before any training forward: the batch is the best estimate
            return xd.mean(0, keepdim=True)
        return run[key].to(x.device)[None]


@dataclass
class Resample(Op):
    """Replace each sequence's activation by another sequence's (a random derangement of the batch)."""

    kind: ClassVar[str] = "resample"

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        b = x.shape[0]
        if b < 2:
            raise ValueError(f"resample on {ctx.site.name} needs a batch of at least 2 sequences, got {b}")
        shift = int(torch.randint(1, b, (1,), generator=ctx.generator))
        perm = (torch.arange(b) + shift) % b
        return x[perm.to(x.device)]


def _load_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float()
    if isinstance(value, (int, float, list)):
        return torch.tensor(value, dtype=torch.float32)
    path = Path(str(value))
    if not path.exists():
        raise FileNotFoundError(f"constant value file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path)).float()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise ValueError(f"{path} holds {sorted(tensors)}; a constant file must hold exactly one tensor")
        return next(iter(tensors.values())).float()
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code
        except pickle.UnpicklingError as e:
            raise ValueError(f"{str(path)!r} holds Python objects besides a tensor; refused by the safe loader ({unpickling_reason(e)})") from None
        except Exception as e:
            raise ValueError(f"{str(path)!r} could not be read ({type(e).__name__})") from None
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a tensor")
        return obj.float()
    raise ValueError(f"constant value file {str(path)!r}: unsupported suffix; valid: .npy, .safetensors, .pt, .pth")


def unpickling_reason(e: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (not its advice to disable it)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "WeightsUnpickler error" in ln:
            return ln.removeprefix("WeightsUnpickler error:").strip()
    return lines[0] if lines else type(e).__name__


def check_value_shape(v: torch.Tensor, x: torch.Tensor, ctx: OpContext, what: str) -> torch.Tensor:
    """Raise a clear error unless ``v`` broadcasts to the selected slice of ``x`` or has ``x``'s full shape
    (a per-sequence value, e.g. built from the batch)."""
    if v.shape == x.shape:
        return v
    info = ctx.site.info
    drop = {0} | ({info.head_dim} if ctx.head is not None and info.head_dim is not None else set())
    want = tuple(s for i, s in enumerate(x.shape) if i not in drop)
    dims = [d for i, d in enumerate(info.dims) if i not in drop]
    try:
        if torch.broadcast_shapes(tuple(v.shape), want) != torch.Size(want) or v.dim() > len(want):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"{what} for site {ctx.site.name}{'' if ctx.head is None else f' head {ctx.head}'}: "
            f"expected a shape broadcastable to {list(want)} {dims} or the site's full shape {list(x.shape)}, got {list(v.shape)}"
        ) from None
    return v  # right-aligned broadcasting places it: the dropped dims (batch, head) lead the shape


@dataclass
class Constant(Op):
    """Replace by a fixed tensor: a number, a nested list, or a .npy/.safetensors/.pt file path."""

    kind: ClassVar[str] = "constant"
    grad_kind: ClassVar[str] = "constant"
    reads_x: ClassVar[bool] = False
    value: float | list | str | torch.Tensor = field(kw_only=True)  # required (no silent zero-ablation); str: a file path
    _tensor: torch.Tensor | None = field(default=None, repr=False)

    def validate(self) -> None:
        try:
            self._tensor = _load_tensor(self.value)
        except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:  # ragged lists, missing or unreadable files
            raise (FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError)(f"op 'constant' field `value`={_short(self.value)}: {e}") from None
        bad = int((~torch.isfinite(self._tensor)).sum())
        if bad:  # caught here, not as a "diverged" run some steps later
            shown = repr(self.value) if isinstance(self.value, str) else _short(self.value)  # a file: its whole path
            raise ValueError(f"op 'constant' field `value`={shown}: {bad} of {self._tensor.numel()} values are not finite (nan/inf); a constant must be finite")

    def check_site(self, ctx: OpContext, shape: tuple[int, ...]) -> None:
        assert self._tensor is not None
        check_value_shape(self._tensor, torch.empty(shape, device="meta"), ctx, "constant `value`")

    def value_for(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        assert self._tensor is not None
        return check_value_shape(self._tensor, x, ctx, "constant").to(x.device)

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        if ctx.full:
            return _full_like(self.value_for(x, ctx).to(x.dtype), x)
        return x + m * (self.value_for(x, ctx).to(x.dtype) - x)


def import_callable(path: str) -> Callable[..., Any]:
    """``'package.module.name'`` -> the object, with an error that names what failed."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not an import path like 'package.module.function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {path!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"{path!r} is not callable")
    return fn


def declares(*, reads: Any = (), batch: Any = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a ``construct`` function with the sites it reads (``ctx.read``) and the batch fields it needs.

    Each is a list of names or a function of the constructor's keyword arguments (defaults filled in)
    returning one, e.g. ``@declares(reads=lambda kw: [f"layer{kw['layer']}.attn_scores"], batch=["tokens"])``.
    The engine records exactly these sites (so fused attention stays on elsewhere) and checks both
    before training: a read of a site that comes later in the forward is an error naming it.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__clamp_reads__ = reads  # type: ignore[attr-defined]
        fn.__clamp_batch__ = batch  # type: ignore[attr-defined]
        return fn

    return mark


def _declared(fn: Callable[..., Any], attr: str, kwargs: dict[str, Any]) -> list[str]:
    decl = getattr(fn, attr, ())
    if callable(decl):
        bound = inspect.signature(fn).bind_partial(**kwargs)
        bound.apply_defaults()  # the function's own defaults: one source of truth
        decl = decl(dict(bound.arguments))
    return [str(d) for d in decl]


@dataclass
class Construct(Op):
    """Replace by what a user function builds: ``fn(x, ctx, **kwargs) -> value`` (import path in YAML).

    The function may use the batch (``ctx.field('match_pos')``) and other sites (``ctx.read(name)``):
    those of the same forward that come before this site, or — with ``read_from`` — any site of a
    second pass of the current model (``{transform, interventions}``, see :class:`PassSpec`).
    Sites and fields are declared with :func:`declares` on the function or listed in ``reads``.
    The value is a tensor broadcastable to the selection (site shape without batch, and without head
    when heads are selected) or the site's full shape. See :mod:`clamp.interventions.constructors`.
    """

    kind: ClassVar[str] = "construct"
    fn: str | Callable = field(kw_only=True)  # an import path is code: it runs with your permissions
    kwargs: dict = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    read_from: dict[str, Any] | None = None

    def validate(self) -> None:
        if isinstance(self.fn, str):
            self.fn = import_callable(self.fn)
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"construct kwargs must be a mapping, got {self.kwargs!r}")
        try:
            inspect.signature(self.fn).bind(None, None, **self.kwargs)
        except TypeError as e:
            raise ValueError(f"construct fn {getattr(self.fn, '__name__', self.fn)}: kwargs {sorted(self.kwargs)} do not fit its signature: {e}") from None
        except ValueError:  # builtins without a signature
            pass
        if not isinstance(self.reads, list) or not all(isinstance(r, str) for r in self.reads):
            raise ValueError(f"construct reads must be a list of site names, got {self.reads!r}")
        if self.read_from is not None:
            self.second_pass()  # raises on bad keys

    def read_sites(self) -> list[str]:
        return list(dict.fromkeys([*_declared(self.fn, "__clamp_reads__", self.kwargs), *self.reads]))

    def needed_fields(self) -> list[str]:
        return _declared(self.fn, "__clamp_batch__", self.kwargs)

    def second_pass(self) -> PassSpec | None:
        if self.read_from is None:
            return None
        if not isinstance(self.read_from, Mapping):
            raise ValueError(f"construct read_from must be a mapping {{transform, interventions}}, got {self.read_from!r}")
        valid = [f.name for f in dataclasses.fields(PassSpec)]
        unknown = sorted(set(self.read_from) - set(valid))
        if unknown:
            raise ValueError(f"construct read_from got unknown key(s) {unknown}; valid: {valid}")
        spec = PassSpec(**self.read_from)
        spec.validate("read_from")
        return spec

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        v = torch.as_tensor(self.fn(x, ctx, **self.kwargs))
        return check_value_shape(v, x, ctx, f"construct fn {getattr(self.fn, '__name__', self.fn)}").to(x.device)


@dataclass
class ClampToReference(Op):
    """Replace by the activation a reference model computes on the same batch.

    ``reference``: a checkpoint path (Lightning ``.ckpt``, a ``state_dict`` ``.pt``, or ``.safetensors``)
    or ``'init'`` for this run's own frozen initialisation.
    """

    kind: ClassVar[str] = "clamp_to_reference"
    source: ClassVar[str | None] = "reference"
    grad_kind: ClassVar[str] = "constant"
    reads_x: ClassVar[bool] = False
    reference: str = "init"

    def validate(self) -> None:
        if not self.reference.strip():
            raise ValueError("op 'clamp_to_reference' field `reference` is empty; valid: 'init' or a checkpoint path")

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return _source_value(x, ctx)


@dataclass
class Patch(Op):
    """Replace by the same site's activation in a second pass of the current model: on a transformed
    input (activation patching) and/or under its own nested ``interventions`` (e.g. the paper's
    layer-1 clamp: layer-1 patterns from a pass where layer 0's output is the shifted embeddings;
    "preserve patterns": ``transform: identity`` and no nested interventions gives the clean pass).

    ``transform``: 'identity', 'shuffle_positions' (permute each sequence's positions), 'resample_batch'
    (another sequence of the batch), 'random_tokens' (uniform random token ids, features kept),
    or an import path to ``fn(args: tuple, kwargs: dict, generator) -> (args, kwargs)``.
    """

    kind: ClassVar[str] = "patch"
    source: ClassVar[str | None] = "pass"
    reads_x: ClassVar[bool] = False
    transform: str = "resample_batch"  # an import path is code: it runs with your permissions
    interventions: list[Any] = field(default_factory=list)

    def validate(self) -> None:
        spec = self.second_pass()
        spec.validate("patch")

    def second_pass(self) -> PassSpec:
        return PassSpec(self.transform, self.interventions)

    def value(self, x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return _source_value(x, ctx)


def _source_value(x: torch.Tensor, ctx: OpContext) -> torch.Tensor:
    if ctx.source is None:
        raise RuntimeError(f"no {ctx.site.name} activation from the source forward (was the model called with inputs?)")
    if ctx.source.shape != x.shape:
        raise ValueError(f"source activation for site {ctx.site.name}: expected shape {list(x.shape)}, got {list(ctx.source.shape)}")
    return ctx.source


@dataclass
class Freeze(Op):
    """Forward unchanged; gradient through the selection is stopped (scaled by 1 - alpha)."""

    kind: ClassVar[str] = "freeze"
    replaces: ClassVar[bool] = False
    grad_kind: ClassVar[str] = "x"

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        return x - m * (x - x.detach())


@dataclass
class GradOnly(Op):
    """The reverse of freeze: forward unchanged; within the site, gradient flows only through the
    selection (e.g. one head of ``layer1.head2.z``), the rest of the site is detached."""

    kind: ClassVar[str] = "grad_only"
    replaces: ClassVar[bool] = False
    grad_kind: ClassVar[str] = "x"

    def apply(self, x: torch.Tensor, m: torch.Tensor, ctx: OpContext) -> torch.Tensor:
        alpha = float(m.max()) if m.numel() else 0.0
        return x - (alpha - m) * (x - x.detach())


OPS: dict[str, type[Op]] = {
    cls.kind: cls for cls in (Zero, Mean, Resample, Constant, Scale, Noise, ClampToReference, Patch, Construct, Freeze, GradOnly)
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    names = {float: "a number", int: "an integer", str: "a string", bool: "true/false", list: "a list", dict: "a mapping", type(None): "null", torch.Tensor: "a tensor"}
    origin = typing.get_origin(hint) or hint
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def _matches(value: Any, hint: Any) -> bool:
    """Does ``value`` fit the annotation ``hint`` (the subset of typing that op parameters use)?"""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Callable or origin is Callable or origin is typing.Callable:
        return callable(value)
    return isinstance(value, origin or hint)


def op_parameters(cls: type[Op]) -> dict[str, dataclasses.Field]:
    """The user-settable parameters of an op kind (its public dataclass fields)."""
    return {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def make_op(spec: dict[str, Any] | Op) -> Op:
    """Build and validate an op from its YAML dict ``{kind: ..., **params}``.

    Each op kind declares its parameters as dataclass fields; here every given value is checked
    against the field's type, missing required fields are named, and the op's own ``validate``
    checks values, so a bad op fails at setup with the field, the value and the valid choices.
    """
    if isinstance(spec, Op):
        spec.validate()
        return spec
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"op must be a mapping with a `kind`, got {spec!r}; valid kinds: {sorted(OPS)}")
    params = dict(spec)
    kind = params.pop("kind")
    if kind not in OPS:
        raise ValueError(f"unknown op kind {kind!r}; valid kinds: {sorted(OPS)}")
    cls = OPS[kind]
    fields = op_parameters(cls)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"op {kind!r} got unknown parameter(s) {unknown}; valid: {list(fields) or 'none'}")
    missing = [n for n, f in fields.items() if n not in params and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        want = ", ".join(f"`{n}` ({_type_name(hints[n])})" for n in missing)
        raise ValueError(f"op {kind!r} needs {want}")
    for name, value in params.items():
        if not _matches(value, hints[name]):
            raise ValueError(f"op {kind!r} field `{name}`={_short(value)}: expected {_type_name(hints[name])}")
    op = cls(**params)
    op.validate()
    return op
