"""Heads chosen by role: "the top k heads of layer L by metric M", measured once, then fixed.

Head indices carry no role across seeds (the previous-token head is L0H1 in one seed and L0H2 in
the next), so a clamp written as ``layer0.head1.pattern`` misses the mechanism in most seeds. A
:class:`HeadRole` names the heads by what they do instead, measured either

* on a reference run (``reference``: a run folder, meaning its ``checkpoints/last.ckpt``, or a
  checkpoint file; ``{seed}`` is replaced by this run's seed, so one sweep file serves every seed),
  when the fit starts; or
* on this run's own model at optimizer step ``at_step``; interventions using the role are
  inactive before that step.

The scores are the emergence probe's (:mod:`clamp.metrics.heads`, :func:`clamp.metrics.ablation.
ablation_importance`) on the probe sets :class:`clamp.metrics.EmergenceCallback` builds, so
``task/prev_token`` here is the number logged under that tag. Models are measured on their weights
alone, without this run's clamps. An intervention refers to a role by name in braces: in its site
(``layer1.head{kept}.z`` -> ``layer1.head[3].z``) or as an op argument (``head: "{kept}"`` -> 3).

The choice (heads and every head's score) is resolved once, printed, written to TensorBoard, kept
in ``ClampCallback``'s checkpoint state and in ``summary.json``; a resumed run restores it and never
measures again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

ORDERS = ("top", "bottom")
ABLATION_SCORES = ("ablate_zero", "ablate_mean")  # causal importance (task probe only)
_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class HeadRole:
    """``k`` heads of ``layer`` ranked by ``metric`` (``<probe>/<score>``, e.g. ``task/prev_token``).

    Args:
        layer: the layer whose heads are ranked.
        metric: an emergence score as logged, ``<probe>/<score>``: probes ``task`` (the main eval
            split), ``repeat`` or ``random``; scores of :func:`clamp.metrics.heads.all_head_scores`
            (``prev_token``, ``induction``, ``induction_strength``, ``copying``, ...) and ``ablate_zero``
            / ``ablate_mean`` (causal importance, task probe).
        k: how many heads.
        order: ``top`` (highest scores) or ``bottom`` (lowest).
        complement: the layer's other heads instead (``k: 1, complement: true``: every head but the best).
        reference: measure on this run folder or checkpoint (``{seed}``: this run's seed).
        at_step: measure on this run's model at this optimizer step (exclusive with ``reference``).
        probe_size / probe_seed: the probe sets; default: the run's EmergenceCallback's, else its defaults.
    """

    layer: int
    metric: str
    k: int = 1
    order: str = "top"
    complement: bool = False
    reference: str | None = None
    at_step: int | None = None
    probe_size: int | None = None
    probe_seed: int | None = None

    def validate(self, where: str, n_layers: int, n_heads: int) -> None:
        """Everything checkable without measuring; one line naming the field, the value and the valid choices."""
        if not isinstance(self.layer, int) or not 0 <= self.layer < n_layers:
            raise ValueError(f"{where}.layer={self.layer!r} out of range; valid layers are 0..{n_layers - 1}")
        if not isinstance(self.k, int) or not 1 <= self.k <= n_heads:
            raise ValueError(f"{where}.k={self.k!r}: layer {self.layer} has {n_heads} heads; valid k is 1..{n_heads}")
        if self.complement and self.k == n_heads:
            raise ValueError(f"{where}: k={self.k} with complement: true selects no head (the layer has {n_heads}); lower k")
        if self.order not in ORDERS:
            raise ValueError(f"{where}.order={self.order!r}; valid: {list(ORDERS)}")
        if not isinstance(self.metric, str) or self.metric.count("/") != 1:
            raise ValueError(f"{where}.metric={self.metric!r}: write <probe>/<score>, e.g. task/prev_token or task/induction_strength")
        if (self.reference is None) == (self.at_step is None):
            raise ValueError(f"{where}: give exactly one of `reference` (a run folder or checkpoint) or `at_step` (measure this run), got reference={self.reference!r}, at_step={self.at_step!r}")
        if self.at_step is not None and (not isinstance(self.at_step, int) or self.at_step < 0):
            raise ValueError(f"{where}.at_step={self.at_step!r} must be a step >= 0")
        if self.probe_size is not None and (not isinstance(self.probe_size, int) or self.probe_size < 2):
            raise ValueError(f"{where}.probe_size={self.probe_size!r} must be an int >= 2")

    def stand_in(self, n_heads: int) -> list[int]:
        """Heads of the right count to bind and validate interventions before the choice is measured."""
        return list(range(self.k, n_heads)) if self.complement else list(range(self.k))


def parse_roles(roles: Mapping[str, Any] | None) -> dict[str, HeadRole]:
    """``{name: HeadRole | dict}`` as written in YAML; unknown keys are named with the valid ones."""
    out: dict[str, HeadRole] = {}
    valid = [f.name for f in fields(HeadRole)]
    for name, spec in (roles or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name == "seed":
            raise ValueError(f"roles: bad role name {name!r}; use a Python identifier other than 'seed' (it is referenced as {{name}})")
        if isinstance(spec, HeadRole):
            out[name] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"roles.{name}: expected a mapping with keys {valid}, got {spec!r}")
        unknown = sorted(set(spec) - set(valid))
        missing = [k for k in ("layer", "metric") if k not in spec]
        if unknown or missing:
            raise ValueError(f"roles.{name}: " + (f"unknown key(s) {unknown}" if unknown else f"missing {missing}") + f"; valid keys: {valid}")
        out[name] = HeadRole(**spec)
    return out


def role_refs(value: Any) -> set[str]:
    """Role names referenced as ``{name}`` anywhere in an intervention's site or op (``{seed}`` is the run's seed, not a role)."""
    if isinstance(value, str):
        return set(_REF.findall(value)) - {"seed"}
    if isinstance(value, Mapping):
        return set().union(*(role_refs(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(role_refs(v) for v in value)) if value else set()
    return set()


def _fill(value: Any, heads: Mapping[str, list[int]]) -> Any:
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:  # an op argument: one head as an int, several as a list
            h = heads[whole[1]]
            return h[0] if len(h) == 1 else list(h)
        return _REF.sub(lambda m: "[" + ",".join(map(str, heads[m[1]])) + "]", value)
    if isinstance(value, Mapping):
        return {k: _fill(v, heads) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, heads) for v in value]
    return value


def _fill_seed(value: Any, seed: int | None, where: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _fill_seed(v, seed, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_seed(v, seed, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "{seed}" in value:
        if seed is None:
            raise ValueError(f"{where}={value!r} uses {{seed}}, but this run has no seed (set seed_everything)")
        return value.replace("{seed}", str(seed))
    return value


def fill_seed(spec: Any, seed: int | None, where: str) -> Any:
    """The intervention with ``{seed}`` in its op (e.g. a ``clamp_to_reference`` reference to the same
    seed's run, as roles allow) replaced by this run's seed, so one sweep file serves every seed."""
    filled = _fill_seed(spec.op, seed, f"{where}.op")
    return spec if filled == spec.op else replace(spec, op=filled, name=spec.label)


def fill_heads(spec: Any, heads: Mapping[str, list[int]]) -> Any:
    """The intervention with its ``{role}`` references replaced by heads; it keeps its label (so its
    state, logs and resume notes do not depend on which heads were chosen)."""
    return replace(spec, site=_fill(spec.site, heads), op=_fill(spec.op, heads), name=spec.label)


def reference_checkpoint(template: str, seed: int | None, where: str) -> Path:
    """The checkpoint a ``reference`` names: ``{seed}`` filled in; a run folder means its last.ckpt."""
    if "{seed}" in template and seed is None:
        raise ValueError(f"{where}.reference={template!r} uses {{seed}}, but this run has no seed (set seed_everything)")
    path = Path(template.replace("{seed}", str(seed)))
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{where}.reference={template!r}: {str(path)!r} does not exist; train the reference run first, or point it at a run folder holding checkpoints/last.ckpt or at a checkpoint file")
    return path


# --------------------------------------------------------------------------------- measuring
def _probe_settings(role: HeadRole, callbacks: Any) -> tuple[int, int]:
    from clamp.metrics.callback import EmergenceCallback

    emergence = next((cb for cb in callbacks or [] if isinstance(cb, EmergenceCallback)), None)
    defaults = emergence or EmergenceCallback()  # the run's probe sets, so the scores are those it logs
    size = role.probe_size or defaults.probe_size
    seed = role.probe_seed if role.probe_seed is not None else defaults.probe_seed
    return size, seed


def head_scores(model: nn.Module, datamodule: Any, probe: str, size: int, seed: int, only: str | None = None) -> dict[str, torch.Tensor]:
    """Every ``[n_layers, n_heads]`` score of ``probe`` (the emergence probe set of that name) on ``model``.

    Reuses :class:`clamp.metrics.EmergenceCallback`'s probe sets and the scores of :mod:`clamp.metrics.heads`
    (the one upward reference of this package: scores are defined once, in metrics). ``only``: compute just
    that score when it is a causal one (the other scores cost one forward; ablations one per head)."""
    from clamp.metrics import heads
    from clamp.metrics.ablation import ablation_importance
    from clamp.metrics.callback import EmergenceCallback

    device = next(model.parameters()).device
    probes = EmergenceCallback(probe_size=size, probe_seed=seed, causal=False, heatmap_every_n_steps=0)._build_probes(
        SimpleNamespace(datamodule=datamodule), SimpleNamespace(model=model, device=device)  # type: ignore[arg-type]
    )
    if probe not in probes:
        return {}
    batch = probes[probe]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # measuring draws nothing from the training stream
            if only in ABLATION_SCORES:
                return {only: ablation_importance(model, batch, kinds=[only.split("_", 1)[1]])[only.split("_", 1)[1]].float().cpu()} if probe == "task" else {}
            out = {k: v.float().cpu() for k, v in heads.all_head_scores(model, batch).items()}
    finally:
        model.train(was_training)
    return out


def check_metric(role: HeadRole, where: str, model: nn.Module, datamodule: Any, callbacks: Any) -> None:
    """Fail at set-up when ``role.metric`` is not a score this task's probes give (listing those that are)."""
    size, seed = _probe_settings(role, callbacks)
    probe, score = role.metric.split("/")
    if score in ABLATION_SCORES and probe == "task":
        return
    found = head_scores(model, datamodule, probe, size, seed)
    if score in found:
        return
    valid = []
    for p in ("task", "repeat", "random"):
        names = head_scores(model, datamodule, p, size, seed)
        valid += [f"{p}/{n}" for n in sorted(names)] + ([f"{p}/{n}" for n in ABLATION_SCORES] if p == "task" and names else [])
    raise ValueError(f"{where}.metric={role.metric!r} is not a head score of this task's probes; valid: {valid}")


def choose(role: HeadRole, scores: torch.Tensor, where: str) -> tuple[list[int], list[int]]:
    """``(heads, ranked)``: the chosen heads (sorted) and the k ranked ones (best first; ties by index)."""
    values = [float(v) for v in scores]
    sign = -1.0 if role.order == "top" else 1.0
    ranked = sorted(range(len(values)), key=lambda h: (math.isnan(values[h]), sign * values[h] if not math.isnan(values[h]) else 0.0, h))[: role.k]
    nan = [h for h in ranked if math.isnan(values[h])]
    if nan:
        raise ValueError(f"{where}: {role.metric} is not measurable (NaN) for heads {nan} of layer {role.layer}, so {role.order}-{role.k} is undefined; pick another metric or a smaller k")
    heads = sorted(set(range(len(values))) - set(ranked)) if role.complement else sorted(ranked)
    return heads, ranked


@dataclass
class RoleChoice:
    """What a role resolved to: plain data, as checkpoints (``weights_only``) and ``summary.json`` hold it."""

    heads: list[int]
    ranked: list[int]
    scores: list[float]  # every head of the layer
    measured_on: str  # the checkpoint file, or "this run"
    step: int | None  # the optimizer step of the measured model (this run), else None
    spec: dict[str, Any]  # the role as written (reference template, not the filled path)

    def line(self, name: str) -> str:
        role = self.spec
        which = f"{role['order']}-{role['k']} of layer {role['layer']} by {role['metric']}" + (", complement" if role.get("complement") else "")
        where = f"this run at step {self.step}" if self.step is not None else self.measured_on
        scores = " ".join(f"H{h}={s:.3f}" for h, s in enumerate(self.scores))
        return f"clamp: role {name!r} = layer {role['layer']} heads {self.heads} ({which}, measured on {where}; {scores})"


def measure(role: HeadRole, name: str, model: nn.Module, datamodule: Any, callbacks: Any, measured_on: str, step: int | None) -> RoleChoice:
    """Score the role's layer on ``model`` and choose its heads."""
    where = f"roles.{name}"
    size, seed = _probe_settings(role, callbacks)
    probe, score = role.metric.split("/")
    found = head_scores(model, datamodule, probe, size, seed, only=score)
    if score not in found:
        raise ValueError(f"{where}.metric={role.metric!r} is not a head score of this task's probes")
    layer_scores = found[score][role.layer]
    heads, ranked = choose(role, layer_scores, where)
    return RoleChoice(heads, ranked, [float(v) for v in layer_scores], measured_on, step, asdict(role))


# --------------------------------------------------------------------------------- a run's roles
class RoleSet:
    """A run's named roles and their choices (what :class:`ClampCallback` keeps and checkpoints)."""

    def __init__(self, roles: Mapping[str, Any] | None) -> None:
        self.roles = parse_roles(roles)
        self.choices: dict[str, RoleChoice] = {}
        self._references: dict[str, tuple[str, nn.Module]] = {}  # built at check, dropped once measured

    def __bool__(self) -> bool:
        return bool(self.roles)

    def check_refs(self, labelled: list[tuple[str, Any]]) -> None:
        """Every ``{name}`` an intervention uses names a role."""
        for where, spec in labelled:
            unknown = sorted((role_refs(spec.site) | role_refs(spec.op)) - set(self.roles))
            if unknown:
                raise ValueError(f"{where}: refers to role(s) {unknown}, which ClampCallback.roles does not define; defined: {sorted(self.roles)}")

    def check(self, model: nn.Module, datamodule: Any, callbacks: Any, seed: int | None, max_steps: int) -> None:
        """Validate every role and read its reference (set-up time, before anything is measured)."""
        from clamp.interventions.engine import build_reference, check_reference_architecture, load_reference_state

        cfg = model.cfg
        for name, role in self.roles.items():
            where = f"roles.{name}"
            role.validate(where, cfg.n_layers, cfg.n_heads)
            if role.at_step is not None and max_steps > 0 and role.at_step >= max_steps:
                raise ValueError(f"{where}.at_step={role.at_step} is not before trainer.max_steps={max_steps}, so it would never be measured")
            check_metric(role, where, model, datamodule, callbacks)
            if role.reference is not None and name not in self.choices and name not in self._references:
                path = reference_checkpoint(role.reference, seed, where)
                built = next((ref for p, ref in self._references.values() if p == str(path)), None)
                if built is not None:  # one copy per checkpoint, however many roles read it
                    self._references[name] = (str(path), built)
                    continue
                try:
                    state, hparams = load_reference_state(path)
                    check_reference_architecture(model, hparams, str(path))
                    self._references[name] = (str(path), build_reference(model, state, str(path)))
                except (ValueError, FileNotFoundError) as e:
                    raise type(e)(f"{where}: {e}") from None

    def heads(self, n_heads: int) -> dict[str, list[int]]:
        """Each role's heads: the choice, or a stand-in of the right size while unmeasured."""
        return {n: self.choices[n].heads if n in self.choices else r.stand_in(n_heads) for n, r in self.roles.items()}

    def due(self, step: int | None) -> list[str]:
        """Unresolved roles to measure now: reference roles always, step roles at their step (``step`` None: not training)."""
        return [n for n, r in self.roles.items() if n not in self.choices and (r.reference is not None or (step is not None and r.at_step is not None and step >= r.at_step))]

    def resolve(self, names: list[str], model: nn.Module, datamodule: Any, callbacks: Any, step: int) -> list[str]:
        """Measure ``names`` (references on their checkpoint's weights, step roles on ``model``); their lines."""
        lines = []
        for name in names:
            role = self.roles[name]
            if role.reference is not None:
                if name not in self._references:
                    raise RuntimeError(f"roles.{name}: its reference was not read at set-up (call ClampCallback.check first)")
                path, ref = self._references.pop(name)
                ref.to(next(model.parameters()).device)
                choice = measure(role, name, ref, datamodule, callbacks, path, None)
            else:
                if step != role.at_step:  # only a resume past the step without the saved choice gets here
                    raise RuntimeError(
                        f"roles.{name} is measured on this run at step {role.at_step}, but the run is at step {step} and its "
                        "checkpoint holds no choice for it (written before roles existed, or the role was edited); restart the run"
                    )
                choice = measure(role, name, model, datamodule, callbacks, "this run", step)
            self.choices[name] = choice
            lines.append(choice.line(name))
        return lines

    def users(self, specs: list[Any], names: set[str] | None = None) -> list[str]:
        """Labels of the interventions that refer to any of ``names`` (default: unresolved roles)."""
        names = set(self.roles) - set(self.choices) if names is None else names
        return [s.label for s in specs if (role_refs(s.site) | role_refs(s.op)) & names]

    def summary(self, spec: Any) -> dict[str, Any]:
        """The choices an intervention uses, for ``summary.json``."""
        return {n: asdict(self.choices[n]) for n in sorted(role_refs(spec.site) | role_refs(spec.op)) if n in self.choices}

    def state_dict(self) -> dict[str, Any]:
        return {n: asdict(c) for n, c in self.choices.items()}

    def load_state_dict(self, saved: Mapping[str, Any]) -> list[str]:
        """Restore saved choices whose role is unchanged; notes on those that are dropped."""
        notes = []
        for name, data in (saved or {}).items():
            role = self.roles.get(name)
            if role is None:
                notes.append(f"role {name!r} was removed: its saved choice is dropped")
                continue
            if data.get("spec") != asdict(role):
                notes.append(f"role {name!r} changed ({data.get('spec')} -> {asdict(role)}): its saved choice {data.get('heads')} is dropped and it is measured again")
                continue
            self.choices[name] = RoleChoice(**data)
            self._references.pop(name, None)
        return notes
