"""Seed / condition ensembles: N runs of one architecture trained in one process as one batched computation."""

from clamp.ensemble.trainer import EnsembleError, EnsembleTrainer, Member, MemberTrainer

__all__ = ["EnsembleError", "EnsembleTrainer", "Member", "MemberTrainer"]
