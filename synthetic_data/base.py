"""The contract every synthetic task meets: a spec of sizes and a seeded batch sampler.

A batch is a dict of tensors with a fixed sequence length ``T``:

* ``tokens``      long  [B, T]  input token ids (placeholder ids where features are used)
* ``targets``     long  [B, T]  class / next-token targets (any value where ``loss_mask`` is False)
* ``loss_mask``   bool  [B, T]  positions that are scored
* ``features``    float [B, T, d_feature] and ``feature_mask`` bool [B, T]  (optional, continuous inputs)
* task-specific extras (documented by each task), e.g. positions that metrics need.

Batches are generated from ``numpy.random.Generator`` s seeded by ``(seed, split, index)``, so the
same seed gives the same data whatever the number of workers or ranks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TaskSpec:
    """Sizes a model needs to read a task: input vocabulary, context, feature width, output classes."""

    d_vocab: int
    n_ctx: int
    d_feature: int = 0
    d_out: int = 0  # 0 -> next-token prediction over d_vocab


class SyntheticTask(ABC):
    """A generator of batches. Subclasses take their hyper-parameters as typed ``__init__`` args."""

    #: names of the fixed evaluation splits this task offers; the first is the main one.
    eval_splits: tuple[str, ...] = ("eval",)

    def setup(self, seed: int) -> None:
        """Build fixed, seed-dependent structure (e.g. class means). Called once before sampling."""

    @property
    @abstractmethod
    def spec(self) -> TaskSpec: ...

    @abstractmethod
    def sample(self, rng: np.random.Generator, batch_size: int, split: str = "train") -> dict[str, torch.Tensor]:
        """Draw ``batch_size`` sequences of ``split`` ('train' or one of ``eval_splits``)."""

    def layout(self) -> list[str] | None:
        """What each sequence position holds (``clamp sites`` prints it, so a site's ``pos`` axis can be read);
        ``None`` for tasks whose positions carry no fixed role (e.g. token streams)."""
        return None

    def _check_split(self, split: str) -> None:
        valid = ("train", *self.eval_splits)
        if split not in valid:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; valid splits: {valid}")


def model_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The positional arguments a site model's forward takes from a batch: tokens, features, feature_mask."""
    return batch["tokens"], batch.get("features"), batch.get("feature_mask")


def batch_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator for batch ``index`` of ``stream`` (0 = train, 1+ = eval splits)."""
    return np.random.default_rng([seed, stream, index])
