"""``EmergenceCallback``: watch circuits form, every N steps, on fixed seeded probe sets.

Probes (no gradients, batched, on the module's device, global rank 0 only):

* ``task``: the first ``probe_size`` sequences of the DataModule's main eval split (e.g. the
  bursty task's in-context split): previous-token, task induction (attention to ``copy_src``),
  retrieval, copying, label->exemplar and query->matching-label attention, attention sink,
  and the causal importance of each head (loss increase when its ``z`` is zero- or mean-ablated
  through the interventions engine); model-level loss per position and the ICL score.
* ``repeat``: repeated random tokens (Olsson et al. 2022) from the model's output vocabulary:
  previous-token, induction, prefix-matching, copying and retrieval scores. Needs a context of
  at least 6 (repeat period >= 3, so induction is not the previous token); shorter contexts
  (the 5-token exemplar task) get ``random``: uniform random tokens, for the previous-token score.
* ``needle`` (``needle_len > 0``, token data such as natural text): the task probe's sequences
  with a needle of random tokens hidden at a random depth and repeated at the end
  (:func:`clamp.metrics.probes.needle_batch`): retrieval accuracy (``curves/needle/acc``), its
  no-first-copy control (``curves/needle/acc_no_first_copy``, ``curves/needle/retrieval_gain``) and
  the teacher-forced copy score per head (``needle/teacher_forced_copy``, a cheap proxy; runs before
  issue 20.3 logged it as ``needle/retrieval``). Wu et al.'s score needs greedy decoding of every
  trial (:func:`clamp.metrics.retrieval.wu_retrieval_score`), so it is measured after training.

Scalars go to every logger as ``<probe>/<metric>/L{l}H{h}`` and ``curves/...``; heatmaps are
images ``heatmap/<probe>/<metric>``; a custom-scalar layout groups the heads of each metric in
one chart. The model-level probe scalars (``curves/*``, each metric's ``max`` and ``median``) also go
to ``trainer.callback_metrics`` (rank 0), and so does any per-head scalar a callback reads (a
``monitor`` of ``ModelCheckpoint`` or ``EarlyStopping``, an ``until`` schedule's metric: see
:meth:`EmergenceCallback.exposed_metrics`), so each can drive those callbacks. Not every per-head scalar:
Lightning deep-copies ``callback_metrics`` at each checkpoint, which cost ~20 ms a checkpoint for the
~300 per-head scalars of the default model (every probe value is in ``history`` and TensorBoard). Curve history is
checkpointed; at the end of fit, phase changes of the main curves and every per-head curve are
detected (every one, by a causal scan that a longer run cannot undo: ``summary.json``'s
``phase_changes_all``; ``phase_changes`` keeps each curve's largest) and written to TensorBoard and
``summary.json`` (also written, marked incomplete, when
fit stops on an exception or a signal). Active clamps (``ClampCallback``) apply to probes as they
do in validation.

Clamp-based progress measures (Singh et al. 2024): ``probe_interventions`` names extra sets of
interventions that apply only while the task probe is re-evaluated under them, logged as
``task/<set>/loss`` and ``task/<set>/acc`` (e.g. the loss under a perfect previous-token clamp
measures the progress of everything downstream of the previous-token head).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from clamp.interventions.engine import InterventionEngine, intervene
from clamp.metrics import curves, heads
from clamp.metrics.ablation import ablation_importance
from clamp.metrics.phase import curve_scale, main_phase_change, phase_changes_of
from clamp.metrics.probes import needle_batch, text_span_needles, without_first_copy
from clamp.metrics.tb import add_images, custom_scalar_layout, head_scalars, heatmap_image, log_scalars
from clamp.preemption import stop_reason
from clamp.run_files import write_summary
from clamp.training import masked_loss_and_accuracy
from synthetic_data.base import batch_rng, model_inputs
from synthetic_data.repeated_tokens import RepeatedTokens

HEAD_METRICS_FOR_PHASE = (
    "task/induction", "task/induction_strength", "task/query_to_match", "task/label_to_exemplar", "task/prev_token",
    "repeat/induction", "repeat/prev_token", "random/prev_token", "needle/teacher_forced_copy",
)


_PER_HEAD = re.compile(r"/L\d+H\d+$")  # the tags of head_scalars
DETAILS = ("summary", "heads", "full")
SUMMARY_HEAD_METRICS = ("task/label_to_exemplar", "task/query_to_match")  # per head even at detail='summary'


def _shown(tag: str, detail: str) -> bool:
    """Whether a probe scalar goes to TensorBoard at this ``detail`` (see ``EmergenceCallback``)."""
    if detail == "full":
        return True
    if "/loss_pos/" in tag:
        return False
    if detail == "heads":
        return True
    if tag.endswith("/median"):
        return False
    return not _PER_HEAD.search(tag) or tag.rsplit("/", 1)[0] in SUMMARY_HEAD_METRICS


def _random_tokens(rng: np.random.Generator, n: int, t: int, vocab: int) -> dict[str, torch.Tensor]:
    tokens = torch.from_numpy(rng.integers(0, vocab, size=(n, t)))
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, -1] = False
    return {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "loss_mask": mask, "copy_src": torch.full((n, t), -1)}


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


class EmergenceCallback(Callback):
    """Per-head emergence scores, model-level curves, heatmaps and phase-change detection.

    Args:
        every_n_steps: probe cadence in optimizer steps (also probes at step 0).
        probe_size: sequences per probe set.
        probe_seed: seeds the repeated-token probe (the task probe comes from the fixed eval set).
        causal: log each head's causal importance (``task/ablate_zero`` and ``task/ablate_mean``).
        causal_every_n_steps: cadence of the causal importance (a multiple of ``every_n_steps``; also
            at step 0 and the last step). It costs two forwards per head, ~2/3 of a probe, so by default
            it runs at every 5th probe (``None``: ``5 * every_n_steps``).
        heatmap_every_n_steps: cadence of layer x head heatmap images (0 = only at the end).
        phase_curves: scalar tags to run phase-change detection on at the end (besides the
            per-head curves of the main metrics); defaults to every ``val/*`` tag, ``train/loss`` and
            the in-context-learning scores (``curves/*/icl_score``: Olsson et al.'s phase change).
        icl_positions: ``(early, late)`` positions for the ICL score; default ``(T // 10, T - 2)``.
        needle_len: length of the needle-in-a-haystack probe's needle (0: no needle probe).
        needle_depth: range of the needle's depth as fractions of the context.
        needle_from: ``'random'`` (uniform random tokens) or ``'text'`` (spans of other held-out
            sequences, like Wu et al.'s natural-language needles: a small model trained on text
            may retrieve these long before it copies arbitrary tokens).
        probe_interventions: ``{set name: [intervention, ...]}``; the task probe is also evaluated
            under each set (only there, fully on), logged as ``task/<set>/loss`` and ``task/<set>/acc``.
        learning_speed_threshold: summary.json's ``learning_speed`` is the first evaluation at which
            ``learning_speed_curve`` falls below this (Singh et al. 2024: 0.4 ln 2).
        learning_speed_curve: default ``val/<main eval split>/loss`` (the training distribution's).
        detail: what goes to TensorBoard as scalars (``history``, ``summary.json`` and the heatmaps hold
            every value either way): ``'summary'`` the model-level curves, each metric's ``max`` and the
            per-head scalars of the circuit's two headline metrics (``SUMMARY_HEAD_METRICS``; under 100
            tags for the default model); ``'heads'`` every per-head scalar and each metric's median too;
            ``'full'`` (default) also the loss per position.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        probe_size: int = 256,
        probe_seed: int = 1234,
        causal: bool = True,
        causal_every_n_steps: int | None = None,
        heatmap_every_n_steps: int = 500,
        phase_curves: list[str] | None = None,
        icl_positions: tuple[int, int] | None = None,
        needle_len: int = 0,
        needle_depth: tuple[float, float] = (0.1, 0.5),
        needle_from: str = "random",
        probe_interventions: dict[str, list[dict[str, Any]]] | None = None,
        learning_speed_threshold: float = 0.4 * math.log(2),
        learning_speed_curve: str | None = None,
        detail: str = "full",
    ) -> None:
        if detail not in DETAILS:
            raise ValueError(f"EmergenceCallback.detail={detail!r}; valid: {', '.join(map(repr, DETAILS))}")
        self.detail = detail
        if every_n_steps <= 0 or probe_size <= 1:
            raise ValueError(f"every_n_steps must be > 0 and probe_size > 1, got {every_n_steps}, {probe_size}")
        self.every_n_steps, self.probe_size, self.probe_seed = every_n_steps, probe_size, probe_seed
        self.causal, self.heatmap_every_n_steps = causal, heatmap_every_n_steps
        self.causal_every_n_steps = 5 * every_n_steps if causal_every_n_steps is None else causal_every_n_steps
        if self.causal_every_n_steps <= 0 or self.causal_every_n_steps % every_n_steps:
            raise ValueError(f"causal_every_n_steps={causal_every_n_steps} must be a positive multiple of every_n_steps={every_n_steps}")
        self.phase_curves, self.icl_positions = phase_curves, icl_positions
        self.needle_len, self.needle_depth = needle_len, needle_depth
        if needle_from not in ("random", "text"):
            raise ValueError(f"EmergenceCallback.needle_from={needle_from!r}; valid: 'random', 'text'")
        self.needle_from = needle_from
        self.probe_interventions = dict(probe_interventions or {})
        for name, items in self.probe_interventions.items():
            if not name or "/" in name or not isinstance(items, (list, tuple)) or not items:
                raise ValueError(f"probe_interventions.{name}: a set needs a name without '/' and a non-empty list of interventions, got {items!r}")
        self.learning_speed_threshold, self.learning_speed_curve = learning_speed_threshold, learning_speed_curve
        self.sequences_per_step: int | None = None
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.last_heads: dict[str, np.ndarray] = {}
        self._probes: dict[str, dict[str, torch.Tensor]] | None = None
        self._pending_loss: list[tuple[int, torch.Tensor]] = []  # kept on device: no sync per step
        self._micro_loss: list[torch.Tensor] = []  # losses of the micro-batches of the current step
        self._layout_written = False
        self._log_dir: str | None = None
        self._last_probe_step: int | None = None
        self._heatmap_step: int | None = None  # step of the last heatmaps written (the final probe's are not redrawn)
        self._skipped: set[str] = set()

    # ------------------------------------------------------------------ probe sets
    def _build_probes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        cfg = pl_module.model.cfg
        probes: dict[str, dict[str, torch.Tensor]] = {}
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "eval_set"):
            main = dm.eval_split_names[0]
            probes["task"] = {k: v[: self.probe_size] for k, v in dm.eval_set(main).items()}
        vocab = min(cfg.d_vocab, cfg.d_out)
        max_period = cfg.n_ctx // 2
        if vocab >= 2 and max_period >= 3:
            # period >= 3 keeps the induction target (i - period + 1) apart from the previous token
            rep = RepeatedTokens(vocab_size=vocab, seq_len=cfg.n_ctx, min_period=max(3, max_period // 3), max_period=max_period)
            rep.setup(self.probe_seed)
            probes["repeat"] = rep.sample(batch_rng(self.probe_seed, 99, 0), self.probe_size, "eval")
        elif vocab >= 2:  # context too short for a meaningful repeat: plain random tokens (previous-token score)
            probes["random"] = _random_tokens(batch_rng(self.probe_seed, 98, 0), self.probe_size, cfg.n_ctx, vocab)
        if self.needle_len:
            task = probes.get("task")
            if task is None or task.get("feature_mask") is not None:
                raise ValueError(f"EmergenceCallback.needle_len={self.needle_len} needs a DataModule whose eval set is token sequences (e.g. clamp.text.TextDataModule)")
            rng = batch_rng(self.probe_seed, 97, 0)
            needles = text_span_needles(task["tokens"], self.needle_len, rng) if self.needle_from == "text" else None
            probes["needle"] = needle_batch(task["tokens"], self.needle_len, vocab, rng, tuple(self.needle_depth), needles=needles)
        return {name: _to(b, pl_module.device) for name, b in probes.items()}

    # ------------------------------------------------------------------ measuring
    @contextmanager
    def _clamps_as_in_validation(self, trainer: L.Trainer) -> Iterator[None]:
        with ExitStack() as stack:
            for cb in trainer.callbacks:
                if hasattr(cb, "probing") and callable(cb.probing):
                    stack.enter_context(cb.probing(trainer))
            yield

    def _check_probe_interventions(self, model: torch.nn.Module) -> None:
        """Bind every set once, so a bad site or op fails before training with the set's name."""
        for name, items in self.probe_interventions.items():
            try:
                InterventionEngine(model, items).detach()
            except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
                raise type(e)(f"probe_interventions.{name}: {e.args[0] if e.args else e}") from None

    def _under_probe_interventions(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss and accuracy of the task probe under each named intervention set."""
        out: dict[str, float] = {}
        for name, items in self.probe_interventions.items():
            with intervene(model, items, batch=batch):
                loss, acc = masked_loss_and_accuracy(model(*model_inputs(batch)), batch)
            out[f"task/{name}/loss"], out[f"task/{name}/acc"] = float(loss), float(acc)
        return out

    def _clamps_on_batch(self, stack: ExitStack, trainer: L.Trainer | None, probe: str, batch: Mapping[str, torch.Tensor]) -> bool:
        """Give the probe's batch to batch-aware clamps; False (probe skipped, said once) if it lacks their fields."""
        stack.close()
        for cb in trainer.callbacks if trainer is not None else []:
            if not hasattr(cb, "using_batch"):
                continue
            missing = cb.missing_fields(batch)
            if missing:
                if probe not in self._skipped:
                    self._skipped.add(probe)
                    rank_zero_warn(f"EmergenceCallback: probe {probe!r} skipped while clamps needing batch fields {missing} are active (the probe has no such fields)")
                stack.close()
                return False
            stack.enter_context(cb.using_batch(batch))
        return True

    def measure(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """All per-head scores ``{probe/metric: [L, H]}`` and model-level scalars, from real activations."""
        model = pl_module.model
        assert self._probes is not None
        head_scores: dict[str, torch.Tensor] = {}
        scalars: dict[str, float] = {}
        was_training = model.training
        model.eval()
        batch_for_clamps = ExitStack()
        try:
            with torch.no_grad():
                for probe, batch in self._probes.items():
                    if not self._clamps_on_batch(batch_for_clamps, trainer, probe, batch):
                        continue
                    logits, cache = heads.forward_with_cache(model, batch)
                    for name, s in heads.all_head_scores(model, batch, run=(logits, cache)).items():
                        head_scores[f"{probe}/{name}"] = s.detach().float().cpu()
                    loss = masked_loss_and_accuracy(logits, batch)[0]
                    lbp = curves.loss_by_position(logits, batch["targets"], batch["loss_mask"]).cpu()
                    scalars[f"curves/{probe}/loss"] = float(loss)
                    scalars[f"curves/{probe}/acc"] = float(curves.accuracy(logits, batch["targets"], batch["loss_mask"]))
                    scored = [i for i in range(len(lbp)) if math.isfinite(float(lbp[i]))]
                    for i in scored:
                        scalars[f"curves/{probe}/loss_pos/{i:03d}"] = float(lbp[i])
                    if len(scored) >= 2:
                        early, late = self.icl_positions or (max(scored[0], len(lbp) // 10), scored[-1])
                        if early in scored and late in scored:
                            scalars[f"curves/{probe}/icl_score"] = float(curves.in_context_learning_score(lbp, early, late))
                    scalars[f"curves/{probe}/attn_sink"] = float(head_scores[f"{probe}/attn_sink"].nanmean())
                    if self.causal and probe == "task" and self._causal_due(trainer):
                        for kind, s in ablation_importance(model, batch).items():
                            head_scores[f"task/ablate_{kind}"] = s
                    if probe == "task":
                        scalars.update(self._under_probe_interventions(model, batch))
                    if probe == "needle":
                        scalars.update(self._needle_control(model, batch, scalars["curves/needle/acc"], batch_for_clamps, trainer))
        finally:
            batch_for_clamps.close()
            model.train(was_training)
        return head_scores, scalars

    def _needle_control(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], acc: float, stack: ExitStack, trainer: L.Trainer | None) -> dict[str, float]:
        """The needle's no-first-copy control (issue 20): the same batch with the first copy overwritten by the
        text it hid, so accuracy there is guessing from the cue and the text; only the difference
        (``curves/needle/retrieval_gain``) is retrieval."""
        assert self._probes is not None
        control = without_first_copy(batch, self._probes["task"]["tokens"])
        if not self._clamps_on_batch(stack, trainer, "needle", control):
            return {}
        logits, _ = heads.forward_with_cache(model, control)
        acc_control = float(curves.accuracy(logits, control["targets"], control["loss_mask"]))
        return {"curves/needle/acc_no_first_copy": acc_control, "curves/needle/retrieval_gain": acc - acc_control}

    def _causal_due(self, trainer: L.Trainer | None) -> bool:
        """Causal importance at its own cadence, and always at the last step (the final heatmaps and summary use it)."""
        if trainer is None:  # an analysis call: measure everything
            return True
        step = trainer.global_step
        return step % self.causal_every_n_steps == 0 or (trainer.max_steps is not None and 0 < trainer.max_steps <= step)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        with self._clamps_as_in_validation(trainer):
            head_scores, scalars = self.measure(pl_module, trainer)
        metrics = dict(scalars)
        for name, s in head_scores.items():
            metrics.update(head_scalars(name, s))
            self.last_heads[name] = s.numpy()
            if torch.isfinite(s).any():  # the standout head, in a chart that "ignore outliers" cannot clip
                metrics[f"{name}/max"] = float(s.nan_to_num(float("-inf")).max())
                metrics[f"{name}/median"] = float(s.nanmedian())
        for k, v in metrics.items():
            if _finite(v):
                self.history.setdefault(k, []).append((step, v))
        finite = {k: v for k, v in metrics.items() if _finite(v)}
        log_scalars(trainer.loggers, {k: v for k, v in finite.items() if _shown(k, self.detail)}, step)
        # usable like a self.log'd scalar (until schedules, monitors, early stopping)
        exposed = self.exposed_metrics(trainer, finite)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in finite.items() if k in exposed})
        self._last_probe_step = step
        if not self._layout_written:  # metrics without any finite value (not defined for this task) get no category
            shown = [n for n in sorted(head_scores) if torch.isfinite(head_scores[n]).any() and _shown(f"{n}/L0H0", self.detail)]
            self._write_layout(trainer, shown, pl_module)
        if self.heatmap_every_n_steps and step % self.heatmap_every_n_steps == 0:
            self._log_heatmaps(trainer, step)

    @staticmethod
    def exposed_metrics(trainer: L.Trainer, metrics: Mapping[str, float]) -> set[str]:
        """The probe scalars that go to ``trainer.callback_metrics``: every model-level one, and the
        per-head ones a callback reads (its ``monitor``, or its ``monitored_metrics()``)."""
        wanted: set[str] = set()
        for cb in trainer.callbacks:
            if isinstance(getattr(cb, "monitor", None), str):
                wanted.add(cb.monitor)
            if callable(getattr(cb, "monitored_metrics", None)):
                wanted |= set(cb.monitored_metrics())
        return {k for k in metrics if k in wanted or not _PER_HEAD.search(k)}

    # ------------------------------------------------------------------ tensorboard
    def _tensorboards(self, trainer: L.Trainer) -> list[Any]:
        return [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_custom_scalars")]

    def _write_layout(self, trainer: L.Trainer, metric_names: list[str], pl_module: L.LightningModule) -> None:
        """Custom-scalars layout: the headline curves first, then one category per head metric."""
        cfg = pl_module.model.cfg
        headline: dict[str, list] = {
            "accuracy per eval split (val/*/acc)": ["Multiline", [r"^val/.*/acc$"]],
            "loss: training and per eval split": ["Multiline", [r"^train/loss$", r"^val/.*/loss$"]],
        }
        if any(getattr(cb, "config_summary", None) and cb.config_summary() for cb in trainer.callbacks):
            headline["clamp strength alpha per intervention"] = ["Multiline", [r"^clamp/alpha/.*"]]
        layout = {"headline": headline}
        first = {m: i for i, m in enumerate(HEAD_METRICS_FOR_PHASE)}  # the circuit's metrics before the rest
        metric_names = sorted(metric_names, key=lambda m: (first.get(m, len(first)), m))
        for name, charts in custom_scalar_layout(metric_names, cfg.n_layers, cfg.n_heads).items():
            esc = re.escape(name)
            layout[name] = {f"{name}: top head (max) vs median head": ["Multiline", [rf"^{esc}/(max|median)$"]], **charts}
        for tb in self._tensorboards(trainer):
            tb.add_custom_scalars(layout)
        self._layout_written = True

    def _log_heatmaps(self, trainer: L.Trainer, step: int) -> None:
        if step == self._heatmap_step:
            return
        self._heatmap_step = step
        writers = self._tensorboards(trainer)
        if not writers:
            return
        images = {}
        for name, s in self.last_heads.items():
            if not np.isfinite(s).any():
                continue  # a metric this task does not define: no blank image
            unit = curve_scale(f"{name}/L0H0") == 1.0  # fixed 0..1 colours: the standout head stands out
            images[f"heatmap/{name}"] = heatmap_image(s, f"{name} @ step {step}", vmin=0.0 if unit else None, vmax=1.0 if unit else None)
        for tb in writers:
            add_images(tb, images, step)

    def _hp_metric_names(self, trainer: L.Trainer) -> list[str]:
        splits = getattr(trainer.datamodule, "eval_split_names", ()) if trainer.datamodule is not None else ()
        names = [f"hp/{s}/{m}" for s in splits for m in ("acc_final", "loss_final", "acc_phase_onset", "acc_phase_midpoint", "acc_phase_end")]
        return names + ["hp/train/loss_final", "hp/train/loss_phase_midpoint", "hp/run/steps"]

    def _write_hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One HParams entry per run: model/optimizer/task config and the interventions, so runs compare side by side."""
        from torch.utils.tensorboard.summary import hparams

        params: dict[str, Any] = {}
        for group, values in pl_module.hparams.items():
            if isinstance(values, Mapping):
                params.update({f"{group}/{k}": v for k, v in values.items() if isinstance(v, (int, float, str, bool))})
        dm = trainer.datamodule
        params["seed"] = int(getattr(dm, "seed", None) if getattr(dm, "seed", None) is not None else os.environ.get("PL_GLOBAL_SEED", -1))
        # a sweep run (clamp.sweep.ConditionRecord among the callbacks): its condition and seed as columns
        record = next((cb.record for cb in trainer.callbacks if isinstance(getattr(cb, "record", None), Mapping) and "condition" in cb.record), None)
        if record is not None:
            params["condition"] = str(record["condition"])
            params["experiment"] = str(record.get("experiment", ""))
            if record.get("seed") is not None:
                params["seed"] = int(record["seed"])
        params["trainer/max_steps"] = int(getattr(trainer, "max_steps", -1) or -1)
        if getattr(dm, "batch_size", None) is not None:
            # sequences per optimizer step, over every rank
            params["data/batch_size"] = int(dm.batch_size) * getattr(trainer, "accumulate_grad_batches", 1) * getattr(trainer, "world_size", 1)
        task = getattr(dm, "task", None)
        if task is not None:
            params["data/task"] = type(task).__name__
            params.update({f"data/{k}": v for k, v in vars(task).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))})
        clamps = [i for cb in trainer.callbacks if hasattr(cb, "config_summary") for i in cb.config_summary()]
        params["clamp/summary"] = "; ".join(_describe(i) for i in clamps) or "none"
        for n, item in enumerate(clamps):
            params[f"clamp/{n}/site"] = item["site"]
            params[f"clamp/{n}/op"] = _readable(item["op"])
            params[f"clamp/{n}/schedule"] = _readable(item["schedule"])
        exp, ssi, sei = hparams(params, {name: 0.0 for name in self._hp_metric_names(trainer)})
        for tb in self._tensorboards(trainer):
            writer = tb._get_file_writer()
            for summary in (exp, ssi, sei):
                writer.add_summary(summary)

    def _final_hp_metrics(self, trainer: L.Trainer, summary: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {"hp/run/steps": float(trainer.global_step)}
        for name in self._hp_metric_names(trainer):
            split, metric = name.split("/")[1:]
            if split == "run":
                continue
            tag = "train/loss" if split == "train" else f"val/{split}/{metric.split('_')[0]}"
            if metric.endswith("_final") and tag in summary["final"]:
                out[name] = summary["final"][tag]
            elif "_phase_" in metric and summary["phase_changes"].get(tag):
                out[name] = summary["phase_changes"][tag][metric.rsplit("_", 1)[1]]
        return out

    # ------------------------------------------------------------------ lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(getattr(trainer, "strategy", None), FSDPStrategy):
            raise ValueError(
                "EmergenceCallback probes run on global rank 0 only and read whole weight matrices, which a "
                "sharded (FSDP) model cannot do; use trainer.strategy: ddp, or drop EmergenceCallback for FSDP runs"
            )
        # trainer.log_dir is a collective under DDP (a broadcast): resolve it here, on every rank,
        # so the end-of-fit and on-exception writes on rank 0 need no other rank
        self._log_dir = trainer.log_dir or trainer.default_root_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._check_probe_interventions(pl_module.model)
        self._probes = self._build_probes(trainer, pl_module)
        if trainer.global_step == 0:
            self._write_hparams(trainer, pl_module)
        probed = any(h and h[-1][0] == trainer.global_step for k, h in self.history.items() if k.startswith("curves/"))
        if trainer.global_step % self.every_n_steps == 0 and not probed:  # a resumed run already probed this step
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        if self.sequences_per_step is None and isinstance(batch, Mapping) and "tokens" in batch:
            self.sequences_per_step = int(batch["tokens"].shape[0]) * trainer.world_size * trainer.accumulate_grad_batches
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._micro_loss.append(loss.detach())
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches) and self._micro_loss:
            return  # mid-accumulation: the optimizer step (and the probe) comes with the last micro-batch
        if self._micro_loss:  # one point per optimizer step: the mean over its micro-batches
            self._pending_loss.append((trainer.global_step, torch.stack(self._micro_loss).mean()))
            self._micro_loss = []
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_probe_step:
            self._flush_losses()
            self._probe(trainer, pl_module)

    def _flush_losses(self) -> None:
        """Move the recorded training losses to the history with one device transfer."""
        if self._pending_loss:
            steps, losses = zip(*self._pending_loss)
            values = torch.stack(losses).float().cpu().tolist()
            self.history.setdefault("train/loss", []).extend(zip(steps, values))
            self._pending_loss = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        for k, v in trainer.callback_metrics.items():
            if k.startswith("val/") and isinstance(v, torch.Tensor) and v.numel() == 1:
                hist = self.history.setdefault(k, [])
                if not hist or hist[-1][0] != trainer.global_step:
                    hist.append((trainer.global_step, float(v)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._flush_losses()
        if self.last_heads:
            self._log_heatmaps(trainer, trainer.global_step)
        summary = self.summarize(trainer)
        for logger in trainer.loggers:  # phase changes: the HParams metrics and one text table, not a chart per number
            logger.log_metrics(self._final_hp_metrics(trainer, summary), step=trainer.global_step)
        for tb in self._tensorboards(trainer):
            tb.add_text("phase_changes", _markdown_table(summary["phase_changes_all"]), trainer.global_step)
        if self._log_dir:
            write_summary(self._log_dir, summary, complete=not trainer.interrupted)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Keep what was measured: write ``summary.json`` marked incomplete, with why fit stopped."""
        if not trainer.is_global_zero or not self._log_dir:
            return
        try:
            self._flush_losses()
            write_summary(self._log_dir, self.summarize(trainer), complete=False, stopped=stop_reason(exception))
        except Exception as e:  # never mask the exception that stopped the run
            if str(e) != str(exception):  # the same failed write (a full disk) is the one line the command prints
                rank_zero_warn(f"could not write summary.json after {type(exception).__name__}: {e}")

    # ------------------------------------------------------------------ summary
    def _phase_curves(self) -> list[str]:
        main = self.phase_curves or sorted(
            k for k in self.history if k.startswith("val/") or k == "train/loss" or k.endswith("/icl_score")
        )
        per_head = sorted(k for k in self.history if k.rsplit("/", 1)[0] in HEAD_METRICS_FOR_PHASE)
        return [c for c in main + per_head if c in self.history]

    def summarize(self, trainer: L.Trainer | None = None) -> dict[str, Any]:
        """Phase changes of the main and per-head curves, final values and top heads (``summary.json``)."""
        every: dict[str, list[dict[str, Any]]] = {}
        phases: dict[str, dict[str, Any] | None] = {}
        for curve in self._phase_curves():
            points = [(s, v) for s, v in self.history[curve] if math.isfinite(v)]  # a diverged run's NaNs are no curve
            found = phase_changes_of(curve, np.asarray([p[0] for p in points], float), np.asarray([p[1] for p in points], float)) if len(points) >= 2 else []
            every[curve] = [pc.to_dict() for pc in found]
            main = main_phase_change(found)
            phases[curve] = main.to_dict() if main else None
        top = {}
        for name, s in sorted(self.last_heads.items()):
            flat = [(float(v), l, h) for (l, h), v in np.ndenumerate(s) if math.isfinite(float(v))]
            flat.sort(reverse=True)
            top[name] = [{"head": f"L{l}H{h}", "score": v} for v, l, h in flat[:3]]
        final = {k: v[-1][1] for k, v in sorted(self.history.items()) if "/L" not in k and not k.endswith(("/max", "/median"))}
        clamps = [cb.config_summary() for cb in (trainer.callbacks if trainer else []) if hasattr(cb, "config_summary")]
        return {
            "step": trainer.global_step if trainer else None,
            "sequences_per_step": self.sequences_per_step,
            "phase_changes": phases,
            "phase_changes_all": every,
            "learning_speed": self.learning_speed(trainer),
            "final": final,
            "top_heads": top,
            "interventions": [i for c in clamps for i in c],
        }

    def learning_speed(self, trainer: L.Trainer | None = None) -> dict[str, Any]:
        """The first evaluation at which the training distribution's loss is below the threshold
        (Singh et al. 2024's learning speed; ``step``/``sequences`` None if it never is)."""
        curve = self.learning_speed_curve
        if curve is None:
            splits = getattr(getattr(trainer, "datamodule", None), "eval_split_names", None) if trainer else None
            curve = f"val/{splits[0]}/loss" if splits else next((k for k in sorted(self.history) if k.startswith("val/") and k.endswith("/loss")), "val/loss")
        step = next((s for s, v in self.history.get(curve, []) if v < self.learning_speed_threshold), None)
        per = self.sequences_per_step
        return {
            "curve": curve,
            "threshold": self.learning_speed_threshold,
            "step": step,
            "sequences": None if step is None or per is None else step * per,
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        # tensors and plain lists only: Lightning loads checkpoints with torch.load(weights_only=True).
        # Packed into a few tensors: ~400 curves as lists of tuples cost ~20 ms a checkpoint to pickle.
        self._flush_losses()
        names = list(self.history)
        points = [p for k in names for p in self.history[k]]
        heads = list(self.last_heads)
        return {
            "history": {
                "names": names,
                "lengths": torch.tensor([len(self.history[k]) for k in names], dtype=torch.long),
                "steps": torch.tensor([int(s) for s, _ in points], dtype=torch.long),
                "values": torch.tensor([float(v) for _, v in points], dtype=torch.float64),
            },
            "last_heads": {"names": heads, "scores": torch.from_numpy(np.stack([np.asarray(self.last_heads[k]) for k in heads])) if heads else torch.zeros(0)},
            "sequences_per_step": self.sequences_per_step,
        }

    @staticmethod
    def unpack_history(state_dict: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
        """``{tag: [(step, value), ...]}`` from this callback's checkpointed state
        (``ckpt["callbacks"]["EmergenceCallback"]``), packed or in the older list form."""
        history = state_dict.get("history", {})
        if "lengths" not in history:  # a checkpoint written before the packed format
            return {k: [tuple(x) for x in v] for k, v in history.items()}
        lengths = history["lengths"].tolist()
        ends = np.cumsum(lengths).tolist()
        steps, values = history["steps"].tolist(), history["values"].tolist()
        return {k: list(zip(steps[e - n : e], values[e - n : e])) for k, n, e in zip(history["names"], lengths, ends)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        last = state_dict.get("last_heads", {})
        self.history = self.unpack_history(state_dict)
        if "scores" in last:
            self.last_heads = {k: last["scores"][i].numpy() for i, k in enumerate(last["names"])}
        else:
            self.last_heads = {k: v.numpy() for k, v in last.items()}
        self.sequences_per_step = state_dict.get("sequences_per_step", self.sequences_per_step)


def _readable(value: Any) -> str:
    """A config mapping as ``key=value, ...`` (nested in braces), for an HParams cell: raw JSON's quotes
    and escapes made the interventions hard to read there."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_readable(v) if not isinstance(v, Mapping) else '{' + _readable(v) + '}'}" for k, v in sorted(value.items()) if v is not None)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_readable(v) if not isinstance(v, Mapping) else "{" + _readable(v) + "}" for v in value) + "]"
    return str(value)


def _describe(item: Mapping[str, Any]) -> str:
    sched = item.get("schedule") or {}
    stop = sched.get("stop")
    window = f"[{sched.get('start', 0)},{'inf' if stop is None else stop})" if not sched.get("windows") else "windows"
    extra = "+until" if sched.get("until") else ""
    return f"{item['site']}:{item['op'].get('kind')}@{window}{extra}"


def _markdown_table(phases: Mapping[str, list[Mapping[str, Any]]]) -> str:
    """Every phase change, the main curves (``val/*``, ``train/loss``, ``curves/*``) first, each group in time order."""
    rows = [(not curve.startswith(("val/", "train/", "curves/")), pc["midpoint"], curve, pc) for curve, found in phases.items() for pc in found]
    lines = ["| curve | onset | midpoint | end | before -> after |", "|---|---|---|---|---|"]
    for _, _, curve, pc in sorted(rows, key=lambda r: r[:3]):
        lines.append(f"| {curve} | {pc['onset']:.0f} | {pc['midpoint']:.0f} | {pc['end']:.0f} | {pc['before']:.3g} -> {pc['after']:.3g} |")
    return "\n".join(lines) if len(lines) > 2 else "no phase change detected"
