"""``clamp.load_run``: a finished (or interrupted) run back in Python, in one call.

A run folder (``runs/<experiment>/version_N``) holds ``config.yaml`` (the resolved config),
``checkpoints/*.ckpt`` and ``summary.json``. :func:`load_run` rebuilds from them the trained
model, the task with the run's seed (so its eval sets are the ones the run was validated on), and
a batch maker, so analysis code is three lines::

    run = clamp.load_run("runs/induction_default/version_0")
    batch = run.batch(64)                       # 64 sequences of the main eval split
    logits, cache = run.model.run_with_cache(batch, names=["layer1.head*.pattern"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from clamp.training import TrainingModule
from models import Transformer
from synthetic_data.base import SyntheticTask, batch_rng
from synthetic_data.datamodule import SyntheticDataModule

__all__ = ["Run", "find_checkpoint", "load_run", "run_dir_of"]


def run_dir_of(path: str | Path) -> Path:
    """The run folder of a run folder or of a checkpoint inside its ``checkpoints/``."""
    p = Path(path)
    if p.is_file():
        return p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p


def find_checkpoint(run_dir: str | Path) -> Path:
    """``checkpoints/last.ckpt`` of a run folder, else its newest checkpoint; a clear error if none."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run folder {str(d)!r} does not exist; run folders look like runs/<experiment>/version_<N>")
    last = d / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    if last.is_symlink():  # save_last: link whose target was deleted
        raise FileNotFoundError(
            f"{str(last)!r} is a broken link to {str(last.readlink())!r}, which no longer exists (save_last: link points "
            "at the newest checkpoint); restore that file, or point --ckpt_path at another checkpoint in the folder"
        )
    ckpts = sorted((c for c in d.glob("checkpoints/*.ckpt") if c.is_file()), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(
            f"no checkpoint in {str(d / 'checkpoints')!r} (the run stopped before its first validation, "
            "or was a `clamp validate` run); pass a run folder that holds checkpoints/last.ckpt"
        )
    return ckpts[-1]


def _datamodule(config: dict[str, Any]) -> L.LightningDataModule:
    """The run's DataModule, instantiated from the ``data`` section of its ``config.yaml`` with its seed.

    ``data`` is either ``{class_path, init_args}`` (what ``clamp fit`` saves) or the bare
    arguments of a :class:`SyntheticDataModule`.
    """
    from jsonargparse import ArgumentParser

    data = dict(config["data"])
    if "class_path" not in data:
        data = {"class_path": "synthetic_data.SyntheticDataModule", "init_args": data}
    init_args = dict(data.get("init_args") or {})
    init_args["seed"] = int(config.get("seed_everything") or 0)  # the CLI links it; the saved file omits it
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    cfg = parser.parse_object({"data": {"class_path": data["class_path"], "init_args": init_args}})
    return parser.instantiate_classes(cfg)["data"]


@dataclass
class Run:
    """One training run: the trained module, its config and task, and a seeded batch maker.

    Attributes:
        dir: the run folder.
        ckpt: the checkpoint the weights came from.
        module: the :class:`TrainingModule` (eval mode); ``module.model`` is the transformer.
        config: the run's resolved ``config.yaml`` as a dict (``None`` if the folder has none).
        datamodule: the run's data, seeded as in training (``None`` without a ``config.yaml``).
        summary: ``summary.json`` (phase changes, final values, top heads), or ``None``.
    """

    dir: Path
    ckpt: Path
    module: TrainingModule
    config: dict[str, Any] | None
    datamodule: L.LightningDataModule | None
    summary: dict[str, Any] | None

    @property
    def model(self) -> Transformer:
        """The trained transformer (named sites, ``run_with_cache``, ``intervene``)."""
        return self.module.model

    @property
    def task(self) -> SyntheticTask:
        """The run's task generator (with the run's seed already applied)."""
        return self._data().task

    @property
    def splits(self) -> tuple[str, ...]:
        """Eval split names; the first is the main one (e.g. ``('ic', 'iw')``)."""
        return self._data().eval_split_names

    def _data(self) -> SyntheticDataModule:  # any DataModule with task/eval_set/eval_split_names works
        if self.datamodule is None:
            raise RuntimeError(f"{self.dir} has no config.yaml, so its task is unknown; build batches with the task yourself")
        return self.datamodule

    def batch(self, n: int = 64, split: str | None = None, index: int = 0) -> dict[str, torch.Tensor]:
        """``n`` sequences on the model's device.

        ``split=None`` or an eval split name: the first ``n`` of that fixed eval set (the sequences
        validation used); ``'train'``: training batch ``index`` of a fresh stream with the run's seed.
        """
        data = self._data()
        split = split or data.eval_split_names[0]
        if split == "train":
            b = data.task.sample(batch_rng(data.seed, 0, index), n, "train")
        elif split in data.eval_split_names:
            full = data.eval_set(split)
            if n > data.eval_size:
                raise ValueError(f"batch: n={n} exceeds the {split!r} eval set ({data.eval_size} sequences); use split='train' for more")
            b = {k: v[:n] for k, v in full.items()}
        else:
            raise ValueError(f"batch: unknown split {split!r}; valid: {['train', *data.eval_split_names]}")
        dev = self.module.device
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.items()}


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> Run:
    """Load a run from its folder (``runs/<exp>/version_N``) or from one of its checkpoints.

    The module is rebuilt with :meth:`TrainingModule.load_from_checkpoint` and put in eval mode.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist; pass a run folder (runs/<experiment>/version_<N>) or a .ckpt file")
    ckpt = p if p.is_file() else find_checkpoint(p)
    run_dir = run_dir_of(ckpt)
    module = TrainingModule.load_from_checkpoint(ckpt, map_location=map_location)
    module.eval()
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    datamodule = _datamodule(config) if config and "data" in config else None
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return Run(dir=run_dir, ckpt=ckpt, module=module, config=config, datamodule=datamodule, summary=summary)
