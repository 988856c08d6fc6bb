"""Seeded synthetic tasks for studying induction / retrieval-head emergence, and their DataModule."""

from synthetic_data.associative_recall import AssociativeRecall
from synthetic_data.base import SyntheticTask, TaskSpec, batch_rng
from synthetic_data.bursty import BurstyClassification
from synthetic_data.datamodule import SyntheticDataModule, TaskStream, TensorDictDataset
from synthetic_data.features import load_exemplars
from synthetic_data.markov import MarkovICL
from synthetic_data.repeated_tokens import RepeatedTokens

__all__ = [
    "AssociativeRecall",
    "BurstyClassification",
    "MarkovICL",
    "RepeatedTokens",
    "SyntheticDataModule",
    "SyntheticTask",
    "TaskSpec",
    "TaskStream",
    "TensorDictDataset",
    "batch_rng",
    "load_exemplars",
]
