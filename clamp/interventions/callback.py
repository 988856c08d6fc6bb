"""``ClampCallback``: interventions throughout training, driven by the optimizer step.

Lifecycle: the engine is built (and the whole intervention list validated) in ``setup``, so bad
sites, ops or schedules fail before the first step; references are loaded in ``on_fit_start``
on the module's device (each DDP rank holds its own); hooks are removed in ``teardown``.
The checkpointed state holds the release steps of metric-driven schedules, running means and
the run's initial weights when a ``reference: init`` clamp needs them, so a resumed run
continues exactly as an uninterrupted one. That state is keyed per intervention name: editing,
adding or removing one intervention before resuming leaves the others' state untouched, and
the resumed run says what changed and what happens to each intervention's state.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from clamp.interventions.engine import Intervention, InterventionEngine, as_intervention
from clamp.interventions.roles import RoleSet, fill_heads, fill_seed, role_refs


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


class ClampCallback(Callback):
    """Apply a list of :class:`Intervention` s during training (and validation / probes).

    Args:
        interventions: what to clamp, how, and when (see :class:`Intervention`).
        seed: seeds the randomness of ``noise``, ``resample`` and ``patch`` per step.
        log_alpha: log each intervention's alpha as ``clamp/alpha/<name>`` so curves can be read against it.
        roles: ``{name: HeadRole fields}``: heads chosen by what they do, measured once on a reference
            run or on this run at a step (:mod:`clamp.interventions.roles`); interventions use them as
            ``{name}`` in their site (``layer1.head{kept}.z``) or op arguments (``head: "{kept}"``).
    """

    STATE_KEY = "ClampCallback"

    def __init__(self, interventions: list[Intervention], seed: int = 0, log_alpha: bool = True, roles: dict[str, dict[str, Any]] | None = None) -> None:
        self.interventions = [as_intervention(i) for i in interventions]  # as written: `{role}` references kept
        self.roles = RoleSet(roles)
        self.seed = seed
        self.log_alpha = log_alpha
        self.engine: InterventionEngine | None = None
        self._init_state: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._last_metrics: dict[str, float] = {}
        self._last_alphas: tuple[int | None, dict[str, float] | None] = (None, None)
        self._until_checked = False
        self._task_checked = False
        self._resumed_without_state = False

    @property
    def state_key(self) -> str:
        # one stable key: the state inside is keyed per intervention, so editing the list does not orphan it
        return self.STATE_KEY

    def monitored_metrics(self) -> set[str]:
        """The metrics this callback reads (its ``until`` conditions): the callback that logs them keeps
        them in ``trainer.callback_metrics`` (EmergenceCallback puts per-head scores there only on demand)."""
        return {i.schedule.until.metric for i in self.interventions if i.schedule.until is not None}

    def config_summary(self) -> list[dict[str, Any]]:
        """Plain-data description of the interventions (for hparams / reports): heads chosen by role as
        chosen, with the choice (heads, every head's score, where measured) under ``roles``."""
        out = []
        bound = {b.spec.label: b.spec for b in self.engine.bound} if self.engine is not None else {}
        for spec in self.interventions:
            chosen = self.roles.summary(spec)
            used = role_refs(spec.site) | role_refs(spec.op)
            item = asdict(bound[spec.label] if spec.label in bound and used <= set(chosen) else spec)
            out.append({**item, "roles": chosen} if chosen else item)
        return out

    # ------------------------------------------------------------------ validation
    def check(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: Any = None) -> None:
        """Validate everything knowable before training (sites, ops, shapes, batch fields of the task,
        schedules against ``max_steps``, reference files) without touching the run folder; idempotent."""
        dm = datamodule or getattr(trainer, "datamodule", None)
        if self.engine is None:
            self.roles.check_refs([(f"intervention {i} ({s.label})", s) for i, s in enumerate(self.interventions)])
            seed = getattr(dm, "seed", None)
            seed = int(seed) if seed is not None else (int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None)
            self.interventions = [fill_seed(s, seed, f"intervention {i} ({s.label})") for i, s in enumerate(self.interventions)]
            if self.roles:
                if dm is None:
                    raise ValueError(f"ClampCallback.roles {sorted(self.roles.roles)} are measured on the task's probe sets, but the run has no DataModule")
                self.roles.check(pl_module.model, dm, getattr(trainer, "callbacks", []), seed, int(getattr(trainer, "max_steps", -1) or -1))
            self.engine = InterventionEngine(pl_module.model, self._specs(pl_module.model), seed=self.seed, held=self.roles.users(self.interventions))
        task = getattr(dm, "task", None)
        if task is not None and not self._task_checked:
            self._check_task_fields(task)
            self._task_checked = True
        max_steps = int(getattr(trainer, "max_steps", -1) or -1)
        for b in self.engine.bound:
            first = b.spec.schedule.bounds()[0]
            if max_steps > 0 and first >= max_steps:
                raise ValueError(
                    f"intervention {b.index} ({b.spec.label}).schedule: starts at step {first} but trainer.max_steps "
                    f"is {max_steps}, so it would never be active; start it earlier or raise max_steps"
                )
        paths = [k for k in self.engine.reference_keys() if k != "init"]
        if paths:  # read and check reference files now (the init reference needs the initial weights later)
            self.engine.load_references(keys=paths)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check(trainer, pl_module)
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    # ------------------------------------------------------------------ heads chosen by role
    def _specs(self, model: Any) -> list[Intervention]:
        """The interventions with role references filled in (stand-in heads for roles not yet measured)."""
        heads = self.roles.heads(model.cfg.n_heads)
        return [fill_heads(s, heads) if role_refs(s.site) | role_refs(s.op) else s for s in self.interventions]

    def _rebind_resolved(self, model: Any) -> None:
        """Bind the held interventions whose roles are all measured now to their chosen heads."""
        assert self.engine is not None
        ready = set(self.roles.choices)
        specs = {s.label: c for s, c in zip(self.interventions, self._specs(model)) if s.label in self.engine.held and (role_refs(s.site) | role_refs(s.op)) <= ready}
        if specs:
            self.engine.rebind(specs)

    def _resolve_roles(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int | None) -> None:
        """Measure the roles due now, once; print, log and bind their heads (DDP: rank 0's choice)."""
        due = self.roles.due(step)
        if not due or self.engine is None:
            return
        self.engine.detach()  # measured on the weights alone; the next update re-attaches the hooks
        lines = self.roles.resolve(due, pl_module.model, trainer.datamodule, trainer.callbacks, trainer.global_step)
        if getattr(trainer, "world_size", 1) > 1:
            self.roles.choices, lines = trainer.strategy.broadcast((self.roles.choices, lines), src=0)
        for line in lines:
            rank_zero_info(line)
        for logger in trainer.loggers:
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text) and trainer.is_global_zero:
                add_text("clamp/roles", "\n\n".join(lines), trainer.global_step)
        self._rebind_resolved(pl_module.model)

    def _check_task_fields(self, task: Any) -> None:
        """Batch-aware interventions need fields the task must provide: say so before the first step."""
        assert self.engine is not None
        needed = self.engine.needed_fields()
        if not needed or task is None or not hasattr(task, "sample"):
            return
        import numpy as np

        fields = set(task.sample(np.random.default_rng(0), 2, "train"))  # a throwaway batch: only its keys matter
        missing = [f for f in needed if f not in fields]
        if missing:
            users = sorted({b.spec.label for b in self.engine.bound if set(b.fields) & set(missing) or (b.nested is not None and set(b.nested.needed_fields()) & set(missing))})
            raise ValueError(f"interventions {users} need batch field(s) {missing}, which task {type(task).__name__} does not provide; its batches have {sorted(fields)}")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        legacy = [k for k in states if isinstance(k, str) and k.startswith(self.STATE_KEY + "[")]
        if len(legacy) == 1:  # older checkpoints keyed the state by a hash of the whole list
            states[self.state_key] = states.pop(legacy[0])
            return
        self._resumed_without_state = True
        rank_zero_warn(f"resuming from a checkpoint without clamp state: all {len(self.interventions)} intervention(s) start fresh")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.engine is not None
        init_users = [b.spec.label for b in self.engine.bound if getattr(b.op, "reference", None) == "init"]
        if init_users and self._init_state is None:
            if trainer.ckpt_path is not None:  # weights are already the checkpoint's here, not the init
                raise RuntimeError(
                    f"intervention(s) {init_users} use `reference: init`, but the checkpoint {str(trainer.ckpt_path)!r} was "
                    "written by a run without a `reference: init` clamp, so it does not hold the run's initial weights; "
                    "start the run from scratch (same seed: same init) or point `reference` at a checkpoint file"
                )
            self._init_state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        self.engine.load_references(self._init_state, device=pl_module.device)
        self._resolve_roles(trainer, pl_module, trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is not None and not all(k in self.engine.references for k in self.engine.reference_keys()):
            self.engine.load_references(self._init_state, device=pl_module.device)  # validate-only runs
        self._resolve_roles(trainer, pl_module, None)  # validate-only runs: reference roles (in fit: done at its start)
        self._set(trainer, "val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is None:
            return
        self._last_metrics.update(_scalar_metrics(trainer.callback_metrics))
        # latch releases now, before a checkpoint of this validation is written
        self.engine.observe(trainer.global_step, self._last_metrics)
        if trainer.world_size > 1:  # rank 0 sees every metric (probes run there): all ranks follow its decisions
            self._last_metrics, self.engine.released = trainer.strategy.broadcast((self._last_metrics, self.engine.released), src=0)
        if not trainer.sanity_checking and not self._until_checked:
            self._until_checked = True
            self._check_until_metrics(trainer.global_step)
        self.engine.set_mode("train")

    def _check_until_metrics(self, step: int) -> None:
        """Fail at the first validation when an ``until`` metric was never logged (a typo would never release)."""
        assert self.engine is not None
        for b in self.engine.bound:
            cond = b.spec.schedule.until
            if cond is None or cond.metric in self._last_metrics or b.spec.label in self.engine.released:
                continue
            close = difflib.get_close_matches(cond.metric, list(self._last_metrics), n=3, cutoff=0.5)
            hint = f"did you mean {close}?" if close else f"logged so far: {sorted(k for k in self._last_metrics if '/L' not in k)[:12]}"
            raise ValueError(
                f"intervention {b.index} ({b.spec.label}).schedule.until.metric={cond.metric!r} was not logged by the first "
                f"validation (step {step}), so it could never release; {hint}"
            )

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.engine is not None:
            self.engine.set_batch(batch)  # batch-aware values (ctx.field) read this batch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is not None and not self._until_checked:  # no validation ran: say that `until` never could fire
            waiting = [b.spec.label for b in self.engine.bound if b.spec.schedule.until is not None and b.spec.label not in self.engine.released]
            if waiting:
                rank_zero_warn(f"intervention(s) {waiting} wait for an `until` metric, but no validation ran in this fit, so they were never released")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.engine is not None:
            self._resolve_roles(trainer, pl_module, trainer.global_step)
            self.engine.set_batch(batch)
        alphas = self._set(trainer, "train")
        if self.log_alpha and alphas:
            self._log_alphas(trainer, alphas)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.engine is not None:
            self.engine.fill_missing_grads(pl_module.parameters())

    def _log_alphas(self, trainer: L.Trainer, alphas: dict[str, float]) -> None:
        """Log at the trainer's cadence and on both sides of every change, so TensorBoard draws exact steps."""
        step = trainer.global_step
        emitted_step, prev = self._last_alphas
        changed = prev is not None and prev != alphas
        if changed and emitted_step != step - 1 and step > 0:
            self._emit(trainer, prev, step - 1)
        if prev is None or changed or step % max(1, trainer.log_every_n_steps) == 0:
            self._emit(trainer, alphas, step)
            emitted_step = step
        self._last_alphas = (emitted_step, dict(alphas))

    @staticmethod
    def _emit(trainer: L.Trainer, alphas: Mapping[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"clamp/alpha/{k}": v for k, v in alphas.items()}, step=step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.engine is not None:
            self.engine.detach()

    @contextmanager
    def probing(self, trainer: L.Trainer) -> Iterator[None]:
        """Run a block (e.g. emergence probes) with the interventions as in validation."""
        if self.engine is None:
            yield
            return
        previous = self.engine.mode
        self._set(trainer, "val")
        try:
            yield
        finally:
            self._set(trainer, previous)

    def using_batch(self, batch: Mapping[str, Any]) -> Any:
        """A block whose forwards run ``batch`` (for batch-aware values), e.g. one probe set."""
        return self.engine.using_batch(batch) if self.engine is not None else nullcontext()

    def missing_fields(self, batch: Mapping[str, Any]) -> list[str]:
        """Batch fields the interventions need that ``batch`` lacks (a probe without them cannot run clamped)."""
        return [] if self.engine is None else [f for f in self.engine.needed_fields(live=True) if f not in batch]

    def _set(self, trainer: L.Trainer, mode: str) -> dict[str, float]:
        if self.engine is None:
            return {}
        self.engine.mode = mode
        return self.engine.update(trainer.global_step, self._last_metrics)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_metrics": dict(self._last_metrics)}
        state["specs"] = {i.label: _spec_json(i) for i in self.interventions}
        if self.engine is not None:
            state["engine"] = self.engine.state_dict()
        if self._init_state is not None:
            state["init_state"] = self._init_state
        if self.roles.choices:
            state["roles"] = self.roles.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.engine is None:
            self._pending = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        """Restore per-intervention state, keeping each piece only while what it depends on is unchanged."""
        assert self.engine is not None
        self._last_metrics = dict(state.get("last_metrics", {}))
        if "init_state" in state:
            self._init_state = state["init_state"]
        role_notes = self.roles.load_state_dict(state.get("roles") or {})
        if role_notes:
            rank_zero_warn("resuming with edited roles: " + " | ".join(role_notes))
        self._rebind_resolved(self.engine.model)
        saved_specs: dict[str, str] = state.get("specs") or {}
        engine_state = state.get("engine", {})
        released = dict(engine_state.get("released", {}))
        means = dict(engine_state.get("running_mean", {}))
        if not saved_specs:  # older checkpoint: restore by name, as before
            self.engine.load_state_dict(engine_state)
            return
        keep_released: dict[str, int] = {}
        keep_means: dict[str, Any] = {}
        notes: list[str] = []
        for spec in self.interventions:
            label = spec.label
            if label not in saved_specs:
                notes.append(f"{label!r} is new: starts fresh")
                continue
            old = json.loads(saved_specs[label])
            new = json.loads(_spec_json(spec))
            changed = config_diff(old, new)
            kept, dropped = [], []
            if label in released:
                if old.get("schedule", {}).get("until") == new.get("schedule", {}).get("until"):
                    keep_released[label] = released[label]
                    kept.append(f"released at step {released[label]}")
                else:
                    dropped.append(f"release at step {released[label]} dropped (until changed; re-armed)")
            if means.get(label):
                same_mean = (old["site"], old["op"].get("kind"), old["op"].get("over")) == (new["site"], new["op"].get("kind"), new["op"].get("over"))
                if same_mean:
                    keep_means[label] = means[label]
                    kept.append("running mean kept")
                else:
                    dropped.append("running mean restarted (site or op changed)")
            if changed:
                what = "; ".join(kept + dropped) or "no saved state"
                notes.append(f"{label!r} changed ({', '.join(changed)}): {what}")
        removed = sorted(set(saved_specs) - {i.label for i in self.interventions})
        notes += [f"{label!r} was removed: its saved state is dropped" for label in removed]
        self.engine.load_state_dict({"released": keep_released, "running_mean": keep_means})
        if notes:
            rank_zero_warn("resuming with edited interventions: " + " | ".join(notes))


def _spec_json(spec: Intervention) -> str:
    return json.dumps(asdict(spec), sort_keys=True, default=str)


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two plain-data specs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += config_diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
