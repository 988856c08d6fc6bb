"""Crash-safe run files: ``summary.json`` is always valid JSON and never half-written.

``write_summary`` is the one way a run's summary reaches disk — at the end of fit, on an
exception, on SIGTERM/SIGINT — so readers (``clamp report``, a printed end-of-run summary) can
trust ``complete`` to tell a finished run from a stopped one.

TensorBoard writes event files from a background thread, whose failure (a full disk) printed a
thread traceback and then ``[Errno 28] No space left on device`` naming no file.
:func:`name_event_file_errors` makes every event file clamp's runs write (through
``torch.utils.tensorboard``, as Lightning's ``TensorBoardLogger`` does) fail in the main thread,
once, with an :class:`EventFileWriteError` naming the file and the cause.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.summary.writer.event_file_writer import EventFileWriter

SUMMARY_FILE = "summary.json"


def json_safe(obj: Any) -> Any:
    """Plain JSON data: non-finite floats become ``None`` (JSON has no NaN), tensors and numpy
    scalars become numbers, tuples become lists."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to a temporary file next to ``path``, then rename it into place: a
    reader (or a kill mid-write) sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full or read-only disk: say which file (the old one is intact)
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write {path} ({e.strerror or e}); the previous file, if any, is intact") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_summary(run_dir: str | Path, summary: Mapping[str, Any], *, complete: bool, stopped: str | None = None) -> Path:
    """Write ``<run_dir>/summary.json`` atomically, marked ``complete`` (the run reached its end)
    or not, with ``stopped`` saying why it ended early (a signal, divergence, an error)."""
    data = {"complete": complete, **({"stopped": stopped} if stopped else {}), **summary}
    return write_json_atomic(Path(run_dir) / SUMMARY_FILE, data)


class EventFileWriteError(OSError):
    """An event file could not be written (the message names the file and the cause)."""


class _NamedRecordWrites:
    """A TensorBoard ``RecordWriter`` stand-in for the writer thread: the first failed write or flush
    is kept as an :class:`EventFileWriteError` naming ``path`` (raised in the main thread by
    :class:`NamedEventFileWriter`) instead of killing the thread with a traceback; later records
    are dropped, as the disk takes no more."""

    def __init__(self, inner: Any, path: str) -> None:
        self.inner, self.path = inner, path
        self.error: EventFileWriteError | None = None

    def _guarded(self, what: str, *args: Any) -> None:
        if self.error is not None:
            return
        try:
            getattr(self.inner, what)(*args)
        except OSError as e:
            self.error = EventFileWriteError(e.errno, f"could not write event file {self.path} ({e.strerror or e}); the events logged from here on are lost, the earlier ones are kept")

    def write(self, data: bytes) -> None:
        self._guarded("write", data)

    def flush(self) -> None:
        self._guarded("flush")

    def close(self) -> None:
        self._guarded("close")

    @property
    def closed(self) -> bool:
        return bool(self.inner.closed)


class NamedEventFileWriter(EventFileWriter):
    """TensorBoard's ``EventFileWriter`` whose write failures name the file, once, in the main thread."""

    def __init__(self, logdir: str, *args: Any, **kwargs: Any) -> None:
        self._named_raised = False
        try:
            super().__init__(logdir, *args, **kwargs)
        except OSError as e:
            if isinstance(e, EventFileWriteError):
                raise
            raise EventFileWriteError(e.errno, f"could not create an event file in {logdir} ({e.strerror or e})") from e

    def _records(self) -> _NamedRecordWrites:
        """The guarded record writer, put in place before the first event is queued."""
        writer = self._async_writer
        if not isinstance(writer._writer, _NamedRecordWrites):
            writer._writer = writer._worker._record_writer = _NamedRecordWrites(writer._writer, self._file_name)
        return writer._writer

    def _raise_failure(self) -> None:
        records = self._records()
        if records.error is not None and not self._named_raised:
            self._named_raised = True  # once: teardown's flushes must not bury the message under repeats
            raise records.error

    def add_event(self, event: Any) -> None:
        self._records()
        self._raise_failure()
        super().add_event(event)

    def flush(self) -> None:
        super().flush()
        self._raise_failure()

    def close(self) -> None:
        super().close()
        self._raise_failure()


def name_event_file_errors() -> None:
    """Make ``torch.utils.tensorboard``'s writers (those of Lightning's ``TensorBoardLogger``) create
    :class:`NamedEventFileWriter` s; idempotent. Called where clamp builds a trainer."""
    import torch.utils.tensorboard.writer as tb_writer

    tb_writer.EventFileWriter = NamedEventFileWriter  # type: ignore[misc]
