"""The LightningModule that trains a site-bearing transformer (the project's or a Hugging Face one) on any task.

Loss and accuracy are computed only where the batch's ``loss_mask`` is set, so the same module
serves next-token tasks (loss everywhere) and the exemplar-label task (loss at the query only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F

from models import Transformer, TransformerConfig
from models.hf import HFModelConfig
from clamp.scalars import HEADLINE_GROUP, headline_scalars
from synthetic_data.base import TaskSpec, model_inputs


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup followed by a constant or cosine schedule (per optimizer step)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    total_steps: int = 0  # cosine length; 0 -> trainer.max_steps

    def validate(self) -> None:
        checks = [
            ("schedule", self.schedule in ("constant", "cosine"), "valid: 'constant', 'cosine'"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a finite number > 0"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "must be >= 0"),
            ("beta1", 0 <= self.beta1 < 1, "must be in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "must be in [0, 1)"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("total_steps", self.total_steps >= 0, "must be >= 0 (0: trainer.max_steps)"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"model.optimizer.{name}={getattr(self, name)!r}: {rule}")

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier on ``lr`` at optimizer step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant" or total <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss: the run stops instead of training NaNs to the end."""

    @classmethod
    def between(cls, since: int, step: int, lr: float) -> DivergenceError:
        """The error for a non-finite ``train/loss`` first seen between two checks (one text for
        ``clamp fit`` and for an ensemble's member, which stops alone)."""
        return cls(
            f"training diverged: train/loss became nan/inf between steps {since} and {step} "
            f"(model.optimizer.lr={lr:g}); lower model.optimizer.lr, raise "
            "model.optimizer.warmup_steps, or set trainer.gradient_clip_val"
        )


def masked_loss_and_accuracy(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over the positions in ``batch['loss_mask']`` (computed in fp32).

    On the CPU the masked positions are picked by boolean indexing (the reference numbers); elsewhere
    :func:`masked_loss_and_accuracy_sync_free`, since boolean indexing makes the host wait for the
    device to count the positions: a synchronisation every step."""
    if logits.device.type != "cpu":
        return masked_loss_and_accuracy_sync_free(logits, batch)
    mask = batch["loss_mask"]
    picked = logits[mask].float()
    targets = batch["targets"][mask]
    loss = F.cross_entropy(picked, targets)
    acc = (picked.argmax(-1) == targets).float().mean()
    return loss, acc


def masked_loss_and_accuracy_sync_free(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_loss_and_accuracy` as mask-weighted means over every position, with no shape that
    depends on the data (so no host synchronisation); equal to it up to float rounding of the sums."""
    mask = batch["loss_mask"].reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    targets = torch.where(mask, batch["targets"].reshape(-1), 0)  # unmasked targets may be any filler
    weight = mask.float()
    count = weight.sum()
    loss = (F.cross_entropy(flat, targets, reduction="none") * weight).sum() / count
    acc = ((flat.argmax(-1) == targets).float() * weight).sum() / count
    return loss, acc


def _as(cls: type, value: Any) -> Any:
    """``value`` as a ``cls`` dataclass; dicts (checkpointed hyper-parameters) are converted, unknown keys named."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


class TrainingModule(L.LightningModule):
    """Trains a site model on a task; logs ``train/*`` and ``val/<split>/*`` to TensorBoard.

    A divergence guard stops training with :class:`DivergenceError` once the training loss is not
    finite (checked every ``trainer.log_every_n_steps`` steps and before each validation, from a
    flag kept on the device, so it costs no extra synchronisation per step).

    Args:
        transformer: the project's :class:`models.Transformer` (default sizes when neither it nor ``hf``
            is given); sizes left at 0 are filled from ``task``.
        hf: a Hugging Face causal LM (:class:`models.hf.HFModelConfig`) to train instead of
            ``transformer``; its vocabulary and context default to the task's.
        optimizer: AdamW and learning-rate schedule.
        task: the data's :class:`TaskSpec` (linked automatically from the DataModule by the CLI).
        compile: a ``torch.compile`` backend (``inductor``, ``aot_eager``, ...) for the model, or
            ``None``. Interventions stay live: a changed clamp (an alpha, a hook attached or
            released) is a guard failure that recompiles, so ramps cost compiles (after
            ``torch._dynamo.config.cache_size_limit`` of them a frame runs eagerly, still correct).

    Each argument may also be a plain dict: that is how the hyper-parameters are stored in a
    checkpoint, so ``TrainingModule.load_from_checkpoint(path)`` rebuilds the module.
    """

    def __init__(
        self,
        transformer: TransformerConfig | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(),
        task: TaskSpec | None = None,
        hf: HFModelConfig | None = None,
        compile: str | None = None,
    ) -> None:
        super().__init__()
        given = transformer is not None  # model.hf beside any model.transformer, even one of default values, is refused
        transformer = _as(TransformerConfig, transformer) if given else TransformerConfig()
        optimizer = _as(OptimizerConfig, optimizer)
        task = _as(TaskSpec, task) if task is not None else None
        hf = _as(HFModelConfig, hf) if hf is not None else None
        optimizer.validate()
        spec = task or TaskSpec(d_vocab=0, n_ctx=0)
        self.optimizer_config = optimizer
        hparams = {"optimizer": asdict(optimizer), "task": asdict(spec)}
        if hf is not None:
            if given:
                raise ValueError("model.hf and model.transformer are both set: a run trains one model; drop model.transformer "
                                 "(the Hugging Face architecture is configured by model.hf.config)")
            if spec.d_feature or (spec.d_out and spec.d_out != spec.d_vocab):
                raise ValueError(f"model.hf: Hugging Face causal LMs predict next tokens; this task has d_feature={spec.d_feature}, d_out={spec.d_out} (use model.transformer)")
            self.model = hf.build(d_vocab=spec.d_vocab, n_ctx=spec.n_ctx)
            self.model_config = self.model.cfg
            hparams["hf"] = asdict(hf)
        else:
            self.model_config = transformer.resolved(d_vocab=spec.d_vocab, n_ctx=spec.n_ctx, d_feature=spec.d_feature, d_out=spec.d_out)
            self.model = Transformer(self.model_config)
            hparams["transformer"] = asdict(transformer)
        if compile is not None:
            backends = torch._dynamo.list_backends(exclude_tags=()) + ["inductor"]
            if compile not in backends:
                raise ValueError(f"model.compile={compile!r}; valid torch.compile backends: {sorted(set(backends))}")
            self.model.compile(backend=compile)  # in place: same module, same sites and state_dict keys
            hparams["compile"] = compile
        self.save_hyperparameters(hparams)
        self._finite: torch.Tensor | None = None  # device flag: every training loss finite since the last check
        self._last_finite_check = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(*model_inputs(batch))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, acc = masked_loss_and_accuracy(self(batch), batch)
        finite = torch.isfinite(loss.detach())
        if self._finite is None:
            self._finite = finite
        else:
            self._finite.logical_and_(finite)  # in place: one op per step (the loop is overhead-bound for tiny models)
        if self._logged_this_step():
            self.log("train/loss", loss, prog_bar=True)
            self.log(f"{HEADLINE_GROUP}/train/loss", loss)  # the dashboard's first tag group (clamp.scalars)
            self.log("train/acc", acc)
            # papers often count training sequences, not steps (Singh et al. 2024): log the conversion
            self.log("train/sequences", float((self.global_step + 1) * self.sequences_per_step(batch)))
        return loss

    def _logged_this_step(self) -> bool:
        """Whether train metrics are handed to ``self.log`` this step: when the trainer writes them, and
        before a validation (where ``until`` conditions read them). ``self.log`` costs about as much as a
        step of a tiny model, so logging every step would double the loop's cost."""
        trainer = self._trainer
        if trainer is None:
            return True
        n = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
        val_every = getattr(trainer, "val_check_batch", None)
        before_val = isinstance(val_every, int) and val_every > 0 and n % val_every == 0
        return n % max(1, trainer.log_every_n_steps) == 0 or before_val or trainer.should_stop

    def sequences_per_step(self, batch: dict[str, torch.Tensor]) -> int:
        """Training sequences one optimizer step consumes, over all ranks and accumulated batches."""
        trainer = self._trainer
        world, accumulate = (trainer.world_size, trainer.accumulate_grad_batches) if trainer is not None else (1, 1)
        return int(batch["tokens"].shape[0]) * world * accumulate

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self._check_finite()

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._check_finite()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to train on from an ensemble member's checkpoint (``clamp sweep --ensemble``): it holds
        no Lightning loop state, so ``Trainer.fit`` would count steps from 0 again on trained weights
        (repeating steps, the schedule and the data stream); ensembles resume their own checkpoints."""
        trainer = self._trainer
        if "ensemble" in checkpoint and "loops" not in checkpoint and trainer is not None and trainer.state.fn == "fit":
            raise ValueError(
                f"checkpoint {trainer.ckpt_path} (step {checkpoint.get('global_step')}) was written by an ensemble "
                "(`clamp sweep --ensemble`) and holds no Lightning loop state, so `clamp fit` cannot continue it "
                "without repeating steps; continue it with `clamp sweep <sweep file> --ensemble <N>`"
            )

    def _check_finite(self) -> None:
        """Raise on every rank at once if any rank saw a non-finite training loss since the last check."""
        if self._finite is None:
            return
        diverged = self.trainer.strategy.reduce_boolean_decision(not bool(self._finite), all=False)
        self._finite = None
        step, since = self.trainer.global_step, self._last_finite_check
        self._last_finite_check = step
        if diverged:
            raise DivergenceError.between(since, step, self.optimizer_config.lr)

    def _split_name(self, dataloader_idx: int) -> str:
        names = getattr(getattr(self.trainer, "datamodule", None), "eval_split_names", None)
        return names[dataloader_idx] if names else f"split{dataloader_idx}"

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, acc = masked_loss_and_accuracy(self(batch), batch)
        split = self._split_name(dataloader_idx)
        n = int(batch["loss_mask"].sum())
        # in fit, on_validation_end writes them at global_step (see there); `clamp validate` keeps Lightning's
        kw = dict(add_dataloader_idx=False, sync_dist=True, batch_size=n, logger=not self._fitting())
        self.log(f"val/{split}/loss", loss, prog_bar=dataloader_idx == 0, **kw)
        self.log(f"val/{split}/acc", acc, prog_bar=dataloader_idx == 0, **kw)

    def _fitting(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.state.fn == "fit"

    def on_validation_end(self) -> None:
        """Write ``val/*`` (and their headline copies) at ``global_step``, the number of optimizer steps
        the evaluated weights have had. Lightning's own logging would write them one step earlier (49
        after 50 steps) while the probes, ``summary.json`` and ``train/loss`` (the loss *at* a step,
        before its update) count steps done; one convention keeps curves, summaries and reports aligned."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero or not self._fitting():
            return
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and isinstance(v, torch.Tensor) and v.numel() == 1}
        if val:
            for logger in trainer.loggers:
                logger.log_metrics({**val, **headline_scalars(val)}, step=trainer.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optimizer_config
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
        )
        total = cfg.total_steps or max(int(self.trainer.max_steps), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_factor(s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
