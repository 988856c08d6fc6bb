"""Input transforms for ``patch``: the corrupted run whose activations are patched in.

A transform maps the model's forward inputs ``(args, kwargs)`` to new ones, using the engine's
seeded generator so a resumed run corrupts batches exactly as an uninterrupted run would.
For the project's models ``args = (tokens, features, feature_mask)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Transform = Callable[[tuple[Any, ...], dict[str, Any], torch.Generator], Inputs]


def _per_sequence(args: tuple[Any, ...], index: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Any, ...]:
    return tuple(a if not isinstance(a, torch.Tensor) else index(a) for a in args)


def identity(args: tuple[Any, ...], kwargs: dict[str, Any], gen: torch.Generator) -> Inputs:
    """The same input (a second pass that differs only by its own interventions)."""
    return args, kwargs


def shuffle_positions(args: tuple[Any, ...], kwargs: dict[str, Any], gen: torch.Generator) -> Inputs:
    """Permute the positions of every sequence (one permutation per batch), features moving with tokens."""
    t = args[0].shape[1]
    perm = torch.randperm(t, generator=gen).to(args[0].device)
    return _per_sequence(args, lambda a: a[:, perm]), kwargs


def resample_batch(args: tuple[Any, ...], kwargs: dict[str, Any], gen: torch.Generator) -> Inputs:
    """Every sequence is replaced by another one of the batch (a random cyclic shift, no fixed point)."""
    b = args[0].shape[0]
    if b < 2:
        raise ValueError(f"resample_batch needs a batch of at least 2 sequences, got {b}")
    shift = int(torch.randint(1, b, (1,), generator=gen))
    perm = ((torch.arange(b) + shift) % b).to(args[0].device)
    return _per_sequence(args, lambda a: a[perm]), kwargs


def random_tokens(args: tuple[Any, ...], kwargs: dict[str, Any], gen: torch.Generator) -> Inputs:
    """Replace token ids by uniform random ids below the batch's max id + 1; features are kept."""
    tokens = args[0]
    high = int(tokens.max()) + 1
    rand = torch.randint(0, high, tuple(tokens.shape), generator=gen).to(tokens.device)
    return (rand, *args[1:]), kwargs


BUILTIN: dict[str, Transform] = {f.__name__: f for f in (identity, shuffle_positions, resample_batch, random_tokens)}


def get_transform(name: str) -> Transform:
    """A built-in transform by name, or a user function by import path."""
    if name in BUILTIN:
        return BUILTIN[name]
    if "." not in name:
        raise ValueError(f"unknown patch transform {name!r}; valid: {sorted(BUILTIN)} or an import path 'pkg.module.fn'")
    from clamp.interventions.ops import import_callable

    return import_callable(name)
