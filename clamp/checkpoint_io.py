"""How clamp writes and reads checkpoints: atomically, and without running code from the file.

:class:`AtomicCheckpointIO` (installed by ``clamp fit`` and used by the ensemble loop) writes a
checkpoint to a temporary file in the same folder, flushes it to disk and renames it into place,
so a full disk or a kill mid-write leaves the previous ``last.ckpt`` intact and no torn or
0-byte file behind. :func:`load_checkpoint` is the one way clamp reads a checkpoint: with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain data, so a planted file
that pickles a callable is refused in one line instead of running it.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the message names the file; the previous one is intact)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects other than tensors and plain data (refused, never run)."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to a temporary file next to ``path``, fsync, then ``os.replace``: readers see
    the old file or the new one. A failed write removes the temporary file and names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception):
            reason = " ".join(str(e).split()) or type(e).__name__
            raise CheckpointWriteError(f"could not write checkpoint {path} ({type(e).__name__}: {reason}); the previous file, if any, is intact") from e
        raise
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``weights_only=True``; an :class:`UnsafeCheckpointError`
    naming the file if it pickles anything else (a callable, a class), other errors as torch raises them."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it pickles {found.group(1)}" if found else "refused by weights_only=True"
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds pickled objects that are not tensors or plain data ({what}); "
            "clamp loads checkpoints with torch.load(weights_only=True) and never runs code from them: use a checkpoint clamp or Lightning wrote"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing through :func:`save_atomic` and reading through
    :func:`load_checkpoint` (Lightning's own checkpoints hold only tensors and plain data), whatever
    ``weights_only`` a caller passes: a run's checkpoint never needs to run code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Callable | Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).exists():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location=map_location)
