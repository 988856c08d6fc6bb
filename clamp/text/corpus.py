"""Local corpus files and the token cache: checked and hashed in one pass, cached atomically.

Why here: ``datasets`` reports an empty, binary or non-UTF-8 file only as "An error occurred while
generating the dataset", and a cache keyed by size and mtime reuses stale tokens after an edit
that keeps both. Reading each file once gives the clear error and the content key together.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json")
CHUNK = 1 << 20


def check_and_hash(files: list[str]) -> str:
    """SHA-256 of the files' bytes (in order); raise ``ValueError`` naming a file that is empty,
    binary (NUL bytes) or not UTF-8 (text formats; parquet is only hashed)."""
    digest = hashlib.sha256()
    for f in files:
        text = Path(f).suffix in TEXT_SUFFIXES
        decoder = codecs.getincrementaldecoder("utf-8")()
        size, blank = 0, True
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                if text:
                    if (nul := chunk.find(b"\0")) >= 0:
                        raise ValueError(f"TextDataModule.path: {f}: a binary file, not text (NUL byte at offset {size + nul})")
                    try:
                        blank = not decoder.decode(chunk).strip() and blank
                    except UnicodeDecodeError as e:
                        raise ValueError(f"TextDataModule.path: {f}: not UTF-8 text (byte 0x{chunk[e.start]:02x} at offset {size + e.start}); "
                                         "re-encode it, e.g. iconv -f latin1 -t utf-8") from None  # fmt: skip
                size += len(chunk)
        if text:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise ValueError(f"TextDataModule.path: {f}: not UTF-8 text (truncated character at the end)") from None
        if size == 0 or (text and blank):
            raise ValueError(f"TextDataModule.path: {f}: the file is empty" + ("" if size == 0 else " (only whitespace)"))
        digest.update(f"\0{size}\0".encode())  # file boundaries are part of the content
    return digest.hexdigest()


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename: a kill leaves no partial cache."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path) -> np.ndarray | None:
    """The cached array, or ``None`` (with a warning naming the file) when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        return np.load(path)
    except (ValueError, OSError, EOFError) as e:
        warnings.warn(f"token cache {path} is unreadable ({e}); rebuilding it", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
