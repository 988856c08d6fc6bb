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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clamp.interventions.callback import config_diff
from clamp.runs import run_dir_of

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


def check_run_config(given: Any, ckpt: str | Path, error: type[Exception] = ResumeError) -> bool:
    """Check the full config ``given`` (plain data, as dumped by the parser) against the ``config.yaml``
    of the run folder holding ``ckpt``, by :func:`check_resume`. ``False`` when there is none (a
    checkpoint outside a run folder: :func:`check_checkpoint_hparams` is then the check)."""
    saved = run_dir_of(ckpt) / "config.yaml"
    if not saved.is_file():
        return False
    check_resume(yaml.safe_load(saved.read_text()), given, run_dir_of(ckpt), f"{saved.name} ({saved})", error=error)
    return True


def check_checkpoint_hparams(saved: Mapping[str, Any] | None, model: Mapping[str, Any], ckpt: str | Path, error: type[Exception] = ResumeError) -> None:
    """Check the model's hyper-parameters against those ``ckpt`` was saved with (``saved``; ``None``
    for a checkpoint not written by a ``TrainingModule``, whose weights' shapes are then the check)."""
    if saved is not None:
        check_resume({"model": dict(saved)}, {"model": dict(model)}, run_dir_of(ckpt), f"checkpoint {ckpt}", error=error)
