"""Crash-safe run files: ``summary.json`` is always valid JSON and never half-written.

``write_summary`` is the one way a run's summary reaches disk — at the end of fit, on an
exception, on SIGTERM/SIGINT — so readers (``clamp report``, a printed end-of-run summary) can
trust ``complete`` to tell a finished run from a stopped one.
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
