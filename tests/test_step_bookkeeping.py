"""One step convention (issue 21.5): logged curves, summary.json and grouped reports count optimizer steps done."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from clamp import report_groups
from clamp.cli import main
from clamp.metrics.callback import EmergenceCallback
from clamp.scalars import read_scalars

ROOT = Path(__file__).resolve().parents[1]
#: above every tiny run's loss: learning speed is then the first evaluation, at a known step
THRESHOLD = 100.0


def test_grouped_learning_speed_is_the_mean_of_the_runs_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, validation was logged at 4, 9 while summary.json counted 5, 10: the grouped speed read 4 for runs saying 5."""
    orig_setup = EmergenceCallback.setup

    def setup(self: EmergenceCallback, *args: object, **kwargs: object) -> None:
        self.learning_speed_threshold = THRESHOLD
        orig_setup(self, *args, **kwargs)

    monkeypatch.setattr(EmergenceCallback, "setup", setup)
    monkeypatch.setattr(report_groups.learning_speed, "__defaults__", (THRESHOLD,))
    emergence = {"class_path": "clamp.metrics.EmergenceCallback", "init_args": {"every_n_steps": 5}}
    spec = {
        "experiment": "steps", "base": str(ROOT / "experiments" / "induction_default.yaml"), "save_dir": str(tmp_path / "runs"),
        "seeds": [0, 1],
        "overrides": {"trainer.max_steps": 10, "trainer.val_check_interval": 5, "trainer.enable_progress_bar": False,
                      "trainer.callbacks": [emergence], "data.batch_size": 8, "data.eval_size": 16,
                      "model.transformer": {"d_model": 16, "n_heads": 2}},
    }  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["sweep", str(tmp_path / "sweep.yaml")])
    runs = sorted((tmp_path / "runs" / "steps").glob("*/seed*"))
    assert len(runs) == 2
    per_run = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        speed = summary["learning_speed"]
        df = read_scalars(run)
        val_steps = sorted(df[df["tag"] == speed["curve"]]["step"])
        assert val_steps == [5, 10] and summary["step"] == val_steps[-1], (val_steps, summary["step"])
        assert speed["step"] == val_steps[0]  # the summary's step is a step of the logged curve
        per_run.append(speed["step"])
    out = report_groups.group_report([str(tmp_path / "runs" / "steps")], str(tmp_path / "rep"), quiet=True)
    grouped = json.loads((out / "groups.json").read_text())["learning_speed"]
    (stats,) = grouped.values()
    assert stats["estimate"] == pytest.approx(statistics.mean(per_run)), (stats, per_run)
