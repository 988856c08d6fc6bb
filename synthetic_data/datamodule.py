"""Lightning DataModule serving any :class:`SyntheticTask`: an endless, seeded train stream and fixed eval sets."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info

from synthetic_data.base import SyntheticTask, TaskSpec, batch_rng


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TaskStream(IterableDataset):
    """Endless stream of whole batches.

    The ``k``-th batch this rank consumes is global batch ``(start + k) * world + rank``; DataLoader
    workers take interleaved ``k`` so their round-robin output keeps that order. Starting at
    ``start`` (the batches already consumed) makes a resumed run see exactly the data an
    uninterrupted run would have seen.

    ``rank_world`` is taken in the main process (by ``train_dataloader``) and travels with the
    pickled stream: a spawn-started worker cannot see the process group, so asking there would
    give every rank rank 0 of 1. ``None`` asks the process group when iteration starts.
    """

    def __init__(self, task: SyntheticTask, batch_size: int, seed: int, start: int = 0, rank_world: tuple[int, int] | None = None) -> None:
        self.task, self.batch_size, self.seed, self.start, self.rank_world = task, batch_size, seed, start, rank_world

    def __iter__(self):
        rank, world = self.rank_world or _rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        k = wid
        while True:
            index = (self.start + k) * world + rank
            yield self.task.sample(batch_rng(self.seed, 0, index), self.batch_size, "train")
            k += nw


def train_loader(stream: IterableDataset, num_workers: int, context: str | None = None) -> DataLoader:
    """A DataLoader over a stream of whole batches (``context`` only applies with workers)."""
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
        multiprocessing_context=context if num_workers > 0 else None,
    )


class TensorDictDataset(Dataset):
    """Map-style view over a dict of equally long tensors (so Lightning can shard it across ranks)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors have different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class WholeBatchDataset(TensorDictDataset):
    """A :class:`TensorDictDataset` that the DataLoader reads a batch at a time (with :func:`collate_batch`):
    per-sequence indexing and re-stacking cost more than a validation forward of a tiny model."""

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {k: v[idx] for k, v in self.tensors.items()}


def collate_batch(data: dict[str, torch.Tensor] | list) -> dict[str, torch.Tensor]:
    """Batches from :meth:`WholeBatchDataset.__getitems__` are already whole: pass them through."""
    return data if isinstance(data, dict) else default_collate(data)


class SyntheticDataModule(L.LightningDataModule):
    """Train stream plus one fixed eval set per ``task.eval_splits``, all determined by ``seed``.

    Args:
        task: the task generator.
        batch_size: training sequences per step (per rank).
        eval_size: sequences in each fixed eval split.
        eval_batch_size: batch size for evaluation.
        seed: fixes the task's structure, the train stream and the eval sets.
        num_workers: DataLoader workers for the train stream (0 = in the main process).

    ``multiprocessing_context`` (an attribute, ``None`` = torch's default) sets how the train
    stream's workers start, e.g. ``"spawn"``.
    """

    multiprocessing_context: str | None = None

    def __init__(
        self,
        task: SyntheticTask,
        batch_size: int = 128,
        eval_size: int = 1024,
        eval_batch_size: int = 512,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or eval_size <= 0 or eval_batch_size <= 0:
            raise ValueError(f"batch sizes must be > 0, got batch_size={batch_size}, eval_size={eval_size}, eval_batch_size={eval_batch_size}")
        self.task = task
        self.batch_size, self.eval_size, self.eval_batch_size = batch_size, eval_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.task.setup(seed)
        self._eval: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def spec(self) -> TaskSpec:
        return self.task.spec

    @property
    def eval_split_names(self) -> tuple[str, ...]:
        return tuple(self.task.eval_splits)

    def eval_set(self, split: str) -> dict[str, torch.Tensor]:
        """The fixed eval set of ``split`` (the same tensors on every call, rank and resume)."""
        if self._eval is None:
            self._eval = {
                name: self.task.sample(batch_rng(self.seed, 1 + i, 0), self.eval_size, name)
                for i, name in enumerate(self.task.eval_splits)
            }
        if split not in self._eval:
            raise KeyError(f"unknown eval split {split!r}; valid: {list(self._eval)}")
        return self._eval[split]

    def _consumed_batches(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        stream = TaskStream(self.task, self.batch_size, self.seed, start=self._consumed_batches(), rank_world=_rank_world())
        return train_loader(stream, self.num_workers, self.multiprocessing_context)

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(WholeBatchDataset(self.eval_set(name)), batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_batch)
            for name in self.eval_split_names
        ]
