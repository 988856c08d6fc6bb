"""The default run's TensorBoard stays readable: a budget of scalar tags, per-head detail opt-in."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp.cli import main
from clamp.metrics.callback import EmergenceCallback

ROOT = Path(__file__).resolve().parents[1]
TAG_BUDGET = 100


def test_default_config_writes_at_most_100_scalar_tags(tmp_path: Path) -> None:
    """The default experiment (8 heads, 2 layers), shrunk in width and steps only: headline and circuit tags stay."""
    args = ["fit", "--config", str(ROOT / "experiments" / "induction_default.yaml"), "--trainer.max_steps", "10",
            "--trainer.val_check_interval", "5", "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--data.batch_size", "16", "--data.eval_size", "32", "--model.transformer.d_model", "16"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(args)
    (events,) = tmp_path.glob("*/version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert len(tags) <= TAG_BUDGET, sorted(tags)
    assert {"val/ic/acc", "val/iw/acc", "val/ic/loss", "task/query_to_match/L1H7", "task/induction/max"} <= tags, sorted(tags)
    assert not any("/loss_pos/" in t or t.startswith("task/induction/L") for t in tags)


def test_detail_names_its_choices() -> None:
    with pytest.raises(ValueError, match="detail='all'; valid: 'summary', 'heads', 'full'"):
        EmergenceCallback(detail="all")


def test_next_hints_name_the_venvs_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off PATH, the hints print the environment's own ``clamp`` (``.venv/bin/clamp``), which runs without activating it."""
    import sys

    from clamp.console import run_summary_text

    monkeypatch.setenv("PATH", "/nonexistent")
    text = run_summary_text(tmp_path / "runs" / "x" / "version_0", None)
    venv_clamp = Path(sys.executable).parent / "clamp"
    assert venv_clamp.is_file() and "  clamp report" not in text
    assert any(line.strip().startswith(str(venv_clamp.relative_to(Path.cwd())) if venv_clamp.is_relative_to(Path.cwd()) else str(venv_clamp)) for line in text.splitlines())
