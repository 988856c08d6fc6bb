"""The one rule for continuing a run: the config may change only where the result stays the same experiment.

Every resume path (``clamp fit --resume RUN``, ``clamp fit --config X --ckpt_path FILE``, ``clamp sweep``
continuing an unfinished run, an ensemble member resuming) compares the config it is given with the one
the run was trained with (the run's ``config.yaml``, the checkpoint's hyper-parameters) and refuses any
difference outside :data:`SAFE_CHANGES`, naming each differing dotted key with its old and new value.
Model, task, data, seed and optimizer settings define the experiment; the run length, logging cadence,
progress output and callbacks may change (``ClampCallback`` reconciles edited interventions itself and
says what it kept; the other callbacks measure and log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clamp.interventions.callback import config_diff

#: Dotted config keys (and everything below them) that may differ between a run and its resume.
SAFE_CHANGES: tuple[str, ...] = (
    "trainer.max_steps", "trainer.max_epochs", "trainer.max_time",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.callbacks", "trainer.logger", "trainer.default_root_dir",
    "experiment", "torch_threads", "resume", "ckpt_path",
)  # fmt: skip


class ResumeError(ValueError):
    """A resume whose config would make the run a different experiment (the message lists every difference)."""


def refused_changes(old: Any, new: Any, safe: tuple[str, ...] = SAFE_CHANGES) -> list[str]:
    """``config_diff(old, new)`` without the differences under a ``safe`` key: each ``"key: old -> new"``."""
    def allowed(change: str) -> bool:
        key = change.split(": ", 1)[0]
        return any(key == s or key.startswith(s + ".") for s in safe)

    return [c for c in config_diff(old, new) if not allowed(c)]


def check_resume(old: Any, new: Any, run_dir: str | Path, trained_with: str, error: type[Exception] = ResumeError) -> None:
    """Raise ``error`` naming every refused difference between the config ``run_dir`` was trained with
    (read from ``trained_with``) and the one it is resumed with."""
    changes = refused_changes(old, new)
    if changes:
        raise error(
            f"resuming {run_dir} with a different experiment than its {trained_with} ({'; '.join(changes)}); "
            f"on resume only {', '.join(SAFE_CHANGES[:-3])} and interventions may change: resume with the config it was "
            f"trained with, or start a new run (another experiment name, or delete {run_dir})"
        )
