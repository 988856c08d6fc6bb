"""The ensemble training loop: N members' steps as one batched step, each member an ordinary run.

The loop does what ``lightning.Trainer.fit`` does for one run (the same hooks in the same
order, the same optimizer, schedule, gradient clipping, validation and logging cadence) for N
members at once: one batched forward and backward, one AdamW over the stacked parameters (AdamW
is elementwise, so that is N independent optimizers), gradient norms clipped per member. Each
member keeps its own seed, data stream, eval sets, callbacks, TensorBoard logger and run folder;
its callbacks (``ClampCallback``, ``EmergenceCallback``, ...) run unchanged against a
:class:`MemberTrainer`, the part of ``lightning.Trainer`` they read.

Members given a ``resume_from`` checkpoint (``checkpoints/last.ckpt`` in Lightning's layout, written
by this loop or by ``clamp fit``) continue from it as ``Trainer.fit(ckpt_path=...)`` does: weights,
optimizer and schedule state, every callback's state, the step, and the data stream at that step.
Members step in lockstep, so all of them resume from the same step or none does.

A member whose training loss becomes non-finite stops alone, as ``clamp fit`` would stop it (the
same check at the same cadence, :class:`DivergenceError`): its callbacks see the exception
(``summary.json`` incomplete, with the reason), its last good checkpoint is kept, its slice of the
stacked weights is frozen, and its siblings train on exactly as they would beside a healthy one.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_convert
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from clamp.checkpoint_io import load_checkpoint, save_atomic
from clamp.ensemble.members import MemberRouter, share_storage
from clamp.interventions.engine import zero_missing_grads
from clamp.preemption import StoppedAtEndOfFit, stop_signals
from clamp.resume import check_checkpoint_hparams
from clamp.scalars import headline_scalars
from clamp.training import DivergenceError, TrainingModule, masked_loss_and_accuracy
from models.ensemble import EnsembleTransformer
from synthetic_data.base import model_inputs

SAVE_THREADS = 8  # checkpoint writes in flight at once
INPUT_KEYS = ("tokens", "features", "feature_mask", "targets", "loss_mask")


class EnsembleError(ValueError):
    """Runs that cannot share an ensemble, or a setting the ensemble loop does not support (the message says which)."""


@dataclass
class Member:
    """One member: its module (whose ``.model`` becomes a view of the ensemble), data, callbacks and logger."""

    module: TrainingModule
    datamodule: L.LightningDataModule  # any with SyntheticDataModule's contract: train_dataloader, eval_split_names, eval_set, eval_batch_size
    callbacks: list[Callback]
    logger: Any  # TensorBoardLogger (or any lightning Logger)
    run_dir: Path
    checkpoint: bool = True  # write checkpoints/last.ckpt at each validation and at the end
    name: str = ""
    resume_from: Path | None = None  # a checkpoint to continue from (Lightning's layout)


class MemberTrainer:
    """The attributes of ``lightning.Trainer`` that callbacks read, for one member of an ensemble."""

    is_global_zero = True
    global_rank = 0
    world_size = 1
    accumulate_grad_batches = 1
    sanity_checking = False
    interrupted = False

    def __init__(self, loop: EnsembleTrainer, member: Member) -> None:
        self._loop, self.member = loop, member
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.ckpt_path = None if member.resume_from is None else str(member.resume_from)

    @property
    def global_step(self) -> int:
        return self._loop.global_step

    @property
    def max_steps(self) -> int:
        return self._loop.max_steps

    @property
    def log_every_n_steps(self) -> int:
        return self._loop.log_every_n_steps

    @property
    def loggers(self) -> list[Any]:
        return [self.member.logger] if self.member.logger is not None else []

    @property
    def logger(self) -> Any:
        return self.member.logger

    @property
    def callbacks(self) -> list[Callback]:
        return self.member.callbacks

    @property
    def datamodule(self) -> L.LightningDataModule:
        return self.member.datamodule

    @property
    def log_dir(self) -> str:
        return str(self.member.run_dir)

    @property
    def default_root_dir(self) -> str:
        return str(self.member.run_dir)


@dataclass
class LoopSettings:
    """The trainer settings the loop honours (the same for every member)."""

    max_steps: int
    val_check_interval: int
    log_every_n_steps: int = 50
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _passthrough(loader: Any) -> bool:
    """Whether ``loader`` only passes an iterable dataset's whole batches through (no batching, no
    pinning, ``default_convert``): then its dataset can be read directly, or beside its siblings'."""
    return (
        isinstance(loader, DataLoader) and isinstance(loader.dataset, IterableDataset) and loader.batch_size is None
        and not loader.pin_memory and loader.collate_fn is default_convert
    )  # fmt: skip


class _Lockstep(IterableDataset):
    """Every member's train stream, one step (the list of their batches) at a time.

    Read by one DataLoader with the members' ``num_workers``, all members' sampling runs in those
    workers instead of 16 (say) loaders' worth of processes, or the training process. Inside worker
    ``w`` of ``n`` each member's stream yields its batches ``w, w + n, ...`` (its own worker
    interleaving), and the DataLoader takes the workers in turn, so step ``k`` holds every member's
    batch ``k``: the batches separate runs would read."""

    def __init__(self, datasets: Sequence[IterableDataset]) -> None:
        self.datasets = list(datasets)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        return _zipped([iter(d) for d in self.datasets], _to_numpy)


def _to_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch's tensors as numpy arrays: pickled through the worker's pipe, small arrays cost far less
    than tensors, each of which a worker hands over as its own shared-memory segment."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _same(x: Any) -> Any:
    """The lockstep loader's collate function: batches stay as the worker made them."""
    return x


def _zipped(streams: Sequence[Iterator[Any]], convert: Any = None) -> Iterator[list[Any]]:
    """One item of every (endless) stream per step, each passed through ``convert`` if given."""
    while True:
        yield [next(s) for s in streams] if convert is None else [convert(next(s)) for s in streams]


def _steps(loaders: Sequence[Any]) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The members' batches, one step at a time, read the cheapest way their loaders allow.

    Loaders that only pass whole batches through are read without the DataLoader's per-batch
    machinery (which an ensemble would pay once per member per step): in this process when they
    have no workers, else all in one lockstep DataLoader with their workers. Anything else (a
    batching or pinning loader) is iterated as it is, one loader per member."""
    if not all(_passthrough(lo) for lo in loaders):
        return _zipped([iter(lo) for lo in loaders])
    workers = loaders[0].num_workers
    if workers == 0:
        return _zipped([iter(lo.dataset) for lo in loaders], default_convert)
    lockstep = DataLoader(
        _Lockstep([lo.dataset for lo in loaders]), batch_size=None, num_workers=workers, collate_fn=_same,
        multiprocessing_context=loaders[0].multiprocessing_context, prefetch_factor=loaders[0].prefetch_factor,
    )  # fmt: skip
    return ([default_convert(b) for b in step] for step in lockstep)


class EnsembleTrainer:
    """Trains ``members`` (one architecture, one optimizer config) as one batched computation."""

    def __init__(self, members: Sequence[Member], settings: LoopSettings) -> None:
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        self.members = list(members)
        self.settings = settings
        self.max_steps = settings.max_steps
        self.log_every_n_steps = max(1, settings.log_every_n_steps)
        self.global_step = 0
        cfg = self.members[0].module.model_config
        for m in self.members[1:]:
            if m.module.model_config != cfg:
                raise EnsembleError(f"member {m.name!r} has a different architecture than {self.members[0].name!r}")
            if m.module.optimizer_config != self.members[0].module.optimizer_config:
                raise EnsembleError(f"member {m.name!r} has a different optimizer config than {self.members[0].name!r}")
        self.trainers = [MemberTrainer(self, m) for m in self.members]
        self._resume = self._load_checkpoints()  # weights and step now; optimizer below, callbacks in fit
        device = settings.device
        for m in self.members:
            m.module.to(device)
        self.model = EnsembleTransformer(cfg, len(self.members)).to(device)
        share_storage(self.model, [m.module.model for m in self.members])
        self.router = MemberRouter(self.model, [m.module.model for m in self.members])
        self.optimizer, self.scheduler = self._optimizer()
        if self._resume is not None:
            self._restore_optimizer(self._resume)
        self._eval: dict[str, dict[str, torch.Tensor]] = {}
        self._member_eval: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self._last_train: tuple[torch.Tensor, torch.Tensor] | None = None  # last step's per-member loss and accuracy
        self.stopped: dict[int, str] = {}  # member index -> why it stopped alone (divergence)
        self._frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # a stopped member's weight slices
        self._view_params: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None  # (member, stacked parameter, member's view of it)
        self._nonfinite: torch.Tensor | None = None  # per member, on the device: a non-finite loss since the last check
        self._last_finite_check = self.global_step

    # ------------------------------------------------------------------ optimisation
    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """``TrainingModule.configure_optimizers`` on stacked parameters (decay on what is a matrix per member)."""
        cfg = self.members[0].module.optimizer_config
        params = list(self.model.named_parameters())
        decay = [p for _, p in params if p.ndim - 1 >= 2]
        no_decay = [p for _, p in params if p.ndim - 1 < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)
        )
        total = cfg.total_steps or max(self.max_steps, 0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s, total))

    def _clip_gradients(self) -> None:
        """Lightning's ``gradient_clip_val`` per member: each member's gradient norm is its own."""
        clip = self.settings.gradient_clip_val
        if not clip:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.settings.gradient_clip_algorithm == "value":
            for g in grads:
                g.clamp_(-clip, clip)
            return
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)  # [M, n_params]
        total = torch.linalg.vector_norm(norms, dim=1)  # [M]
        coef = (clip / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *(1,) * (g.dim() - 1)))

    # ------------------------------------------------------------------ hooks
    def _active(self) -> list[tuple[int, MemberTrainer, Member]]:
        """The members still training (not stopped alone): index, trainer, member."""
        return [(i, t, m) for i, (t, m) in enumerate(zip(self.trainers, self.members)) if i not in self.stopped]

    def _call(self, hook: str, *args: Any) -> None:
        for _, trainer, m in self._active():
            for cb in m.callbacks:
                getattr(cb, hook)(trainer, m.module, *args)

    # ------------------------------------------------------------------ divergence
    def _check_finite(self) -> None:
        """``clamp fit``'s divergence guard, per member: a member whose loss was non-finite since the
        last check stops alone (called at the same cadence as ``TrainingModule``'s, and before any save)."""
        if self._nonfinite is None:
            return
        bad = self._nonfinite.cpu().tolist()
        self._nonfinite = None
        since, step = self._last_finite_check, self.global_step
        self._last_finite_check = step
        lr = self.members[0].module.optimizer_config.lr
        for i, diverged in enumerate(bad):
            if diverged and i not in self.stopped:
                self._stop_member(i, DivergenceError.between(since, step, lr))

    def _stop_member(self, index: int, error: BaseException) -> None:
        """Stop member ``index`` alone: its callbacks see ``error`` (summary.json, condition.json), its
        logger is finalized as failed, no checkpoint of it is written again, its weights stay as they are."""
        trainer, m = self.trainers[index], self.members[index]
        self.stopped[index] = f"{type(error).__name__}: {error}"
        for cb in m.callbacks:
            cb.on_exception(trainer, m.module, error)
        for cb in m.callbacks:
            cb.teardown(trainer, m.module, "fit")
        if m.logger is not None:
            m.logger.finalize("failed")
        self._frozen[index] = [(p, p.detach()[index].clone()) for p in self.model.parameters()]
        rank_zero_warn(f"ensemble member {m.name or index} ({m.run_dir}) stopped at step {self.global_step}: {error}; its last good checkpoint is kept, the other members train on")

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        for index, saved in self._frozen.items():
            for p, value in saved:
                p[index].copy_(value)

    def _streams(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        """The members' train streams, a step at a time, each starting after the batches its trainer has
        consumed (its ``global_step``), as under Lightning: a resumed member sees the uninterrupted run's batches."""
        for trainer, m in zip(self.trainers, self.members):
            m.datamodule.trainer = trainer
        return _steps([m.datamodule.train_dataloader() for m in self.members])

    def _stack(self, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        dev = self.settings.device
        return {k: torch.stack([b[k] for b in batches]).to(dev, non_blocking=True) for k in INPUT_KEYS if k in batches[0]}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Every member's fit; SIGTERM / a first SIGINT are noted from set-up to the last write, so a
        signal during the end of fit (phase detection, summary.json) lets that work finish and then
        stops with :class:`StoppedAtEndOfFit`, as ``clamp fit`` does (:mod:`clamp.preemption`)."""
        with stop_signals() as received:
            for trainer, m in zip(self.trainers, self.members):
                m.datamodule.trainer = trainer
                m.datamodule.setup("fit")  # as Trainer.fit does first (TextDataModule copies its tokenizer into the run)
                for cb in m.callbacks:
                    cb.setup(trainer, m.module, "fit")
            if self._resume is not None:
                self._restore_callbacks(self._resume)
                self._resume = None
            self._call("on_fit_start")
            self.model.train()
            for m in self.members:
                m.module.train()
            self._call("on_train_start")
            try:
                self._train_loop(received)
                self._check_finite()  # a member that diverged since the last check stops before its end of fit
                self._call("on_train_end")
                self._call("on_fit_end")
                self._save_checkpoints()
            except BaseException as e:  # as Lightning: callbacks see why fit stopped (summary.json says so), then it propagates
                self._call("on_exception", e)
                self._teardown("failed")
                raise
            self._teardown("success")
        if received:
            raise StoppedAtEndOfFit()

    def _train_loop(self, received: list[int]) -> None:
        """Steps to ``max_steps``; on SIGTERM or a first SIGINT (noted in ``received``), checkpoints after
        the current step and raises ``SIGTERMException``, as ``clamp fit`` does (:mod:`clamp.preemption`):
        a preempted ensemble resumes from that step."""
        streams = self._streams()
        progress = _Progress(self.members, self.global_step, self.max_steps)
        while self.global_step < self.max_steps and len(self.stopped) < len(self.members):
            batches = next(streams)
            self._train_step(batches)
            progress.step(self.global_step)
            if self.global_step % self.log_every_n_steps == 0:
                self._check_finite()
            if self.global_step % self.settings.val_check_interval == 0:
                self._validate()
            if received:
                self._save_checkpoints()
                raise SIGTERMException()

    def _save_checkpoints(self) -> None:
        """Every active member's ``last.ckpt``: built here, written by a few threads at once (the writes,
        fsync and rename release the GIL: 16 tiny members' checkpoints took 14 ms each one after another).
        Every write is waited for, and the first failure (e.g. a full disk) is raised, as a single save's would be."""
        self._check_finite()  # never overwrite a member's last good checkpoint with non-finite weights
        jobs = [(self._checkpoint(m), m.run_dir / "checkpoints" / "last.ckpt") for _, _, m in self._active() if m.checkpoint]
        if len(jobs) <= 1:
            for ckpt, path in jobs:
                save_atomic(ckpt, path)
            return
        with ThreadPoolExecutor(max_workers=min(SAVE_THREADS, len(jobs))) as pool:
            futures = [pool.submit(save_atomic, ckpt, path) for ckpt, path in jobs]
        for f in futures:
            f.result()

    def _teardown(self, status: str) -> None:
        for _, trainer, m in self._active():
            for cb in m.callbacks:
                cb.teardown(trainer, m.module, "fit")
            if m.logger is not None:
                m.logger.finalize(status)

    def _fold_member_grads(self) -> None:
        """Add to the stacked parameters the gradient that reached a member's own view.

        A member's second passes (``patch``/``construct.read_from`` with ``grad: true``) run on its view
        model, whose parameters are separate leaves sharing storage with the stack: without this, that
        gradient would never reach the optimizer and such clamps would silently not train.
        """
        if self._view_params is None:  # fixed objects (share_storage): walking N modules' parameters every step cost ~10 us per member
            stacked = dict(self.model.named_parameters())
            self._view_params = [(m, stacked[name], p) for m, member in enumerate(self.members) for name, p in member.module.model.named_parameters()]
        for m, target, p in self._view_params:
            if p.grad is None:
                continue
            if target.grad is None:
                target.grad = torch.zeros_like(target)
            target.grad[m] += p.grad
            p.grad = None

    def _fill_missing_grads(self) -> None:
        """Zero gradients for stacked parameters that a whole-activation clamp cut off in every member,
        as a single run's ClampCallback gives them (``InterventionEngine.fill_missing_grads``)."""
        engines = [cb.engine for m in self.members for cb in m.callbacks if getattr(cb, "engine", None) is not None]
        if not any(e.graph_cut for e in engines):
            return
        for e in engines:
            e.graph_cut = False
        zero_missing_grads(self.model.parameters())

    def _train_step(self, batches: list[dict[str, torch.Tensor]]) -> None:
        step = self.global_step
        for i, trainer, m in self._active():
            for cb in m.callbacks:
                cb.on_train_batch_start(trainer, m.module, batches[i], 0)
        batch = self._stack(batches)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(*model_inputs(batch))
        pairs = [masked_loss_and_accuracy(logits[i], {k: v[i] for k, v in batch.items()}) for i in range(len(self.members))]
        losses = torch.stack([loss for loss, _ in pairs])
        losses.sum().backward()
        self._fold_member_grads()
        self._fill_missing_grads()
        self._clip_gradients()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self._restore_frozen()
        self.scheduler.step()
        self.global_step += 1
        detached = losses.detach()
        bad = ~torch.isfinite(detached)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self._last_train = (detached, torch.stack([acc for _, acc in pairs]).detach())  # read by `until` at validation, as in Lightning
        for i, trainer, m in self._active():
            for cb in m.callbacks:
                cb.on_train_batch_end(trainer, m.module, {"loss": detached[i]}, batches[i], 0)
        if (step + 1) % self.log_every_n_steps == 0:  # Lightning's train-metric cadence and step index
            values = torch.stack([detached, torch.stack([acc for _, acc in pairs]).detach()]).cpu().tolist()
            for i, _, m in self._active():
                if m.logger is not None:
                    sequences = float((step + 1) * m.module.sequences_per_step(batches[i]))
                    row = {"train/loss": values[0][i], "train/acc": values[1][i], "train/sequences": sequences, "lr-AdamW": lr, "epoch": 0}
                    m.logger.log_metrics({**row, **headline_scalars(row)}, step=step)

    # ------------------------------------------------------------------ validation
    def _eval_sets(self) -> dict[str, dict[str, torch.Tensor]]:
        if not self._eval:
            for name in self.members[0].datamodule.eval_split_names:
                self._eval[name] = self._stack([m.datamodule.eval_set(name) for m in self.members])
        return self._eval

    def _member_eval_set(self, index: int, split: str) -> dict[str, torch.Tensor]:
        """Member ``index``'s whole eval set of ``split`` (every field) on the device, moved there once;
        the model's inputs are views of the stacked eval set, not second copies."""
        key = (index, split)
        if key not in self._member_eval:
            stacked = self._eval_sets()[split]
            data = self.members[index].datamodule.eval_set(split)
            self._member_eval[key] = {
                k: stacked[k][index] if k in stacked else v.to(self.settings.device) if isinstance(v, torch.Tensor) else v for k, v in data.items()
            }
        return self._member_eval[key]

    @torch.no_grad()
    def _validate(self) -> None:
        """Each member's eval sets in Lightning's batches of ``eval_batch_size``: batch-aware clamps see
        exactly the batch a separate run's would. While no member has a clamp acting on the forward, a
        batch is forwarded in slices (:func:`eval_rows`) that keep one forward's residual stream within
        about a cache's size: at full size the intermediates of all members fall out of cache (8 members
        of the singh2024 setting: 10.2x one member's validation time; sliced, 8.2x; the rest is
        attention, whose CPU kernel costs the same per sequence and head either way), while tiny models
        fit whole batches, where slicing would only multiply the forwards and the per-member losses."""
        self._check_finite()  # as `clamp fit` checks before each validation
        self._call("on_validation_start")
        self.model.eval()
        n_members = len(self.members)
        metrics: list[dict[str, torch.Tensor]] = [{} for _ in range(n_members)]
        ebs = self.members[0].datamodule.eval_batch_size
        d_model = self.members[0].module.model_config.d_model
        for split, data in self._eval_sets().items():
            size = data["tokens"].shape[1]
            rows = eval_rows(ebs, n_members, data["tokens"].shape[2], d_model)
            sums = torch.zeros(n_members, 3, device=self.settings.device)  # loss * n, acc * n, n
            for start in range(0, size, ebs):
                stop = min(start + ebs, size)
                for i, trainer, m in self._active():  # batch-aware clamps read this batch's fields
                    full = {k: v[start:stop] for k, v in self._member_eval_set(i, split).items()}
                    for cb in m.callbacks:
                        cb.on_validation_batch_start(trainer, m.module, full, start // ebs)
                step = stop - start if self.router.live() else rows
                for lo in range(start, stop, step):
                    batch = {k: v[:, lo : min(lo + step, stop)] for k, v in data.items()}
                    logits = self.model(*model_inputs(batch))
                    for i in range(n_members):
                        mb = {k: v[i] for k, v in batch.items()}
                        loss, acc = masked_loss_and_accuracy(logits[i], mb)
                        n = mb["loss_mask"].sum().float()
                        sums[i] += torch.stack([loss.float() * n, acc.float() * n, n])
            sums = sums.cpu()
            for i in range(n_members):
                metrics[i][f"val/{split}/loss"] = sums[i, 0] / sums[i, 2]
                metrics[i][f"val/{split}/acc"] = sums[i, 1] / sums[i, 2]
        self.model.train()
        for i, trainer, m in self._active():
            trainer.callback_metrics.update(metrics[i])  # keeps probe metrics (usable by `until`) next to val/*
            if self._last_train is not None:
                trainer.callback_metrics.update({"train/loss": self._last_train[0][i], "train/acc": self._last_train[1][i]})
            if m.logger is not None:
                val = {k: float(v) for k, v in metrics[i].items()}  # at global_step, as clamp fit (TrainingModule.on_validation_end)
                m.logger.log_metrics({**val, **headline_scalars(val), "epoch": 0}, step=self.global_step)
        self._call("on_validation_end")
        self._save_checkpoints()

    # ------------------------------------------------------------------ checkpoints
    def _optimizer_state(self, index: int) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        sliced = {
            k: {n: (v[index].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for n, v in s.items()} for k, s in state["state"].items()
        }
        return {"state": sliced, "param_groups": state["param_groups"]}

    def _checkpoint(self, m: Member) -> dict[str, Any]:
        """Member ``m``'s ``checkpoints/last.ckpt`` in Lightning's layout: weights, hyper-parameters, callback and optimizer states."""
        index = self.members.index(m)
        ckpt = {
            "epoch": 0,
            "global_step": self.global_step,
            "pytorch-lightning_version": L.__version__,
            "state_dict": {f"model.{k}": v.detach().clone() for k, v in m.module.model.state_dict().items()},
            "hyper_parameters": dict(m.module.hparams),
            "callbacks": {cb.state_key: cb.state_dict() for cb in m.callbacks if cb.state_dict()},
            "optimizer_states": [self._optimizer_state(index)],
            "lr_schedulers": [self.scheduler.state_dict()],
            "ensemble": {"members": len(self.members), "index": index},
        }
        return ckpt

    # ------------------------------------------------------------------ resuming
    def _load_checkpoints(self) -> list[dict[str, Any]] | None:
        """Read the members' ``resume_from`` checkpoints, load their weights and take their step.

        Members step in lockstep, so either every member resumes, all from one step, or none does;
        anything else is refused (the runner groups runs by resume step so it never happens there)."""
        resuming = [m.name for m in self.members if m.resume_from is not None]
        if not resuming:
            return None
        fresh = [m.name for m in self.members if m.resume_from is None]
        if fresh:
            raise EnsembleError(f"members {resuming} resume from checkpoints but {fresh} start at step 0; members of one ensemble step in lockstep: train them in separate ensembles")
        ckpts = [read_checkpoint(m.resume_from, m.run_dir) for m in self.members]  # type: ignore[arg-type]
        steps = {m.name: int(c["global_step"]) for m, c in zip(self.members, ckpts)}
        if len(set(steps.values())) > 1:
            raise EnsembleError(f"members resume from different steps {steps}; members of one ensemble step in lockstep: train them in separate ensembles")
        for m, c in zip(self.members, ckpts):
            _check_same_config(m, c)
            m.module.on_load_checkpoint(c)
            try:
                m.module.load_state_dict(c["state_dict"])
            except RuntimeError as e:
                raise EnsembleError(f"run {m.run_dir}: the weights in checkpoint {m.resume_from} do not fit the model: {' '.join(str(e).split())[:400]}") from None
        self.global_step = next(iter(steps.values()))
        return ckpts

    def _restore_optimizer(self, ckpts: Sequence[dict[str, Any]]) -> None:
        """Each member's AdamW and schedule state stacked back along the member axis (the inverse of
        :meth:`_optimizer_state`). A separate run's checkpoint has the same layout: one AdamW whose two
        groups (decay, no decay) list the parameters in the same order, each of one member's shape."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        layout = [len(g["params"]) for g in self.optimizer.param_groups]
        states = []
        for m, c in zip(self.members, ckpts):
            opts = c["optimizer_states"]
            groups = [len(g["params"]) for g in opts[0]["param_groups"]] if len(opts) == 1 else None
            if groups != layout:
                raise EnsembleError(f"run {m.run_dir}: checkpoint {m.resume_from} holds {len(opts)} optimizer state(s) with parameter groups {groups}; this model's one AdamW has groups {layout}")
            states.append(opts[0])
        stacked: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(params):
            entries = [s["state"].get(i) for s in states]
            if all(e is None for e in entries):
                continue
            if any(e is None or set(e) != set(entries[0]) for e in entries):  # type: ignore[arg-type]
                have = [m.name for m, e in zip(self.members, entries) if e is not None]
                raise EnsembleError(f"optimizer state of parameter {i} is saved for members {have} only; one AdamW steps all members together: train them in separate ensembles")
            merged: dict[str, Any] = {}
            for key, first in entries[0].items():  # type: ignore[union-attr]
                values = [e[key] for e in entries]  # type: ignore[index]
                if isinstance(first, torch.Tensor) and first.dim() > 0:
                    bad = {m.name: tuple(v.shape) for m, v in zip(self.members, values) if tuple(v.shape) != tuple(p.shape[1:])}
                    if bad:
                        raise EnsembleError(f"optimizer state {key!r} of parameter {i} has shapes {bad}; the model's is {tuple(p.shape[1:])}")
                    merged[key] = torch.stack(values)
                elif all(torch.equal(torch.as_tensor(v), torch.as_tensor(first)) for v in values):
                    merged[key] = first  # AdamW's step count: one for the whole stack
                else:
                    raise EnsembleError(f"members {[m.name for m in self.members]} differ in optimizer {key!r} of parameter {i} ({[float(v) for v in values]}); train them in separate ensembles")
            stacked[i] = merged
        self.optimizer.load_state_dict({"state": stacked, "param_groups": states[0]["param_groups"]})
        self.scheduler.load_state_dict(ckpts[0]["lr_schedulers"][0])

    def _restore_callbacks(self, ckpts: Sequence[dict[str, Any]]) -> None:
        """As ``Trainer.fit(ckpt_path=...)`` does after ``setup``: every callback's ``on_load_checkpoint``
        sees the checkpoint, then each callback with saved state loads a copy of it."""
        for trainer, m, ckpt in zip(self.trainers, self.members, ckpts):
            for cb in m.callbacks:
                cb.on_load_checkpoint(trainer, m.module, ckpt)  # type: ignore[arg-type]
            states = ckpt.get("callbacks") or {}
            for cb in m.callbacks:
                if states.get(cb.state_key):
                    cb.load_state_dict(copy.deepcopy(states[cb.state_key]))


EVAL_CACHE_BYTES = 4 * 2**20  # one forward's residual stream (fp32) stays within about this many bytes


def eval_rows(eval_batch_size: int, members: int, n_ctx: int, d_model: int) -> int:
    """Rows per member in one validation forward: at least ``eval_batch_size // members`` (a separate
    run's batch in all), more while ``members x rows x n_ctx x d_model`` floats fit :data:`EVAL_CACHE_BYTES`."""
    fits = EVAL_CACHE_BYTES // (4 * members * n_ctx * d_model)
    return max(1, min(eval_batch_size, max(eval_batch_size // members, fits)))


RESUME_KEYS = ("global_step", "state_dict", "optimizer_states", "lr_schedulers")


def read_checkpoint(path: Path, run_dir: Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint to resume ``run_dir`` from, checked to hold what resuming needs; an
    :class:`EnsembleError` naming the run and the problem otherwise (never a silent restart)."""
    try:
        ckpt = load_checkpoint(path, mmap=mmap)
    except Exception as e:  # noqa: BLE001 (any unreadable file: say which and why)
        raise EnsembleError(f"run {run_dir}: cannot read checkpoint {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); restore it, or delete it to restart the run from step 0") from None
    missing = [k for k in RESUME_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(RESUME_KEYS)
    if missing:
        raise EnsembleError(f"run {run_dir}: checkpoint {path} lacks {missing}, which resuming needs; restore it, or delete it to restart the run from step 0")
    return ckpt


def _check_same_config(m: Member, ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint written with other hyper-parameters (model, optimizer, task) than the member's,
    by the one resume rule of ``clamp fit`` (:mod:`clamp.resume`)."""
    check_checkpoint_hparams(ckpt.get("hyper_parameters"), m.module.hparams, m.resume_from, error=EnsembleError)  # type: ignore[arg-type]


class _Progress:
    """One plain line per ensemble (step, steps/s, eta, on stderr) at every 5 % of its steps, at most one
    per ``min_seconds``, and at the last step: readable in cluster logs and for a sweep of many ensembles."""

    def __init__(self, members: Sequence[Member], start: int, max_steps: int, min_seconds: float = 10.0) -> None:
        dirs = [m.run_dir for m in members]
        self.name = f"ensemble {dirs[0].parent.name}/{dirs[0].name}" + (f" + {len(dirs) - 1} more" if len(dirs) > 1 else "")
        self.start, self.max_steps, self.min_seconds = start, max_steps, min_seconds
        self.every = max(1, max_steps // 20)
        self.t0 = self.last = time.monotonic()

    def step(self, step: int) -> None:
        now = time.monotonic()
        if step != self.max_steps and (step % self.every or now - self.last < self.min_seconds):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = (step - self.start) / elapsed
        eta = (self.max_steps - step) / rate if rate > 0 else float("inf")
        print(f"{self.name}: step {step}/{self.max_steps}, {rate:.1f} steps/s, eta {eta:.0f} s", file=sys.stderr, flush=True)
