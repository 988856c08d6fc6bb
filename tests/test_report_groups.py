"""`clamp report --group-by condition`: seeds pooled per sweep condition, from exported curves.csv folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clamp.cli import main
from clamp.report_groups import band, clamp_windows, learning_speed, load_groups, mean_spread, write_curves_csv

LN2 = math.log(2)


def _run(root: Path, condition: str, seed: int, drop_at: float, clamp_stop: int | None = None) -> Path:
    """A run folder as make_results exports it: condition.json + a wide curves.csv (a loss falling from ln 2 at ``drop_at``)."""
    d = root / "study" / condition / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "condition.json").write_text(json.dumps({"experiment": "study", "condition": condition, "seed": seed, "finished": True}))
    steps = np.arange(0, 1000, 10)
    loss = LN2 / (1 + np.exp((steps - drop_at) / 20.0)) + 0.01
    rows = [{"step": s, "tag": "val/ic/loss", "value": v} for s, v in zip(steps, loss, strict=True)]
    if clamp_stop is not None:
        rows += [{"step": s, "tag": "clamp/alpha/pt", "value": float(s < clamp_stop)} for s in steps]
    write_curves_csv(pd.DataFrame(rows), d / "curves.csv", keep=["val/*", "clamp/alpha/*"])
    return d


def test_groups_pool_seeds_with_mean_spread_and_learning_speed(tmp_path: Path) -> None:
    for seed, at in enumerate((300, 400, 500)):
        _run(tmp_path, "slow", seed, at)
    for seed, at in enumerate((100, 120)):
        _run(tmp_path, "fast", seed, at, clamp_stop=500)
    groups = load_groups([tmp_path])
    assert list(groups) == ["fast", "slow"] and [r.seed for r in groups["slow"]] == [0, 1, 2]
    steps, mean, std, n = band(groups["slow"], "val/ic/loss")
    assert n.max() == 3 and steps.size == 100
    # the first step below 0.4 ln 2 of each seed, then mean +- sample std over seeds
    speeds = [learning_speed(*r.curve("val/ic/loss")) for r in groups["slow"]]
    assert speeds == [310.0, 410.0, 510.0]
    stat = mean_spread(speeds)
    assert stat["mean"] == pytest.approx(410.0) and stat["std"] == pytest.approx(100.0) and stat["n"] == 3
    assert clamp_windows(groups["fast"][0]) == {"pt": [(0.0, 500.0)]}
    assert clamp_windows(groups["slow"][0]) == {}
    assert mean_spread([1.0, None])["missing"] == 1


def test_cli_group_by_condition_writes_figure_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, at in enumerate((300, 400)):
        _run(tmp_path / "runs", "none", seed, at)
        _run(tmp_path / "runs", "clamped", seed, at - 200, clamp_stop=1000)
    out = tmp_path / "rep"
    main(["report", str(tmp_path / "runs"), "--group-by", "condition", "--out", str(out), "--tags", "val/*/loss"])
    md = (out / "groups.md").read_text()
    assert "![val/ic/loss](group_val_ic_loss.png)" in md and (out / "group_val_ic_loss.png").stat().st_size > 1000
    row = next(line for line in md.splitlines() if line.startswith("| none |"))
    assert "360 ± 71 (n=2)" in row  # learning speed: seeds at 310 and 410
    data = json.loads((out / "groups.json").read_text())
    assert data["tags"]["val/ic/loss"]["conditions"]["clamped"]["learning_speed"]["values"] == [110.0, 210.0]
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "rep"), "--group-by", "condition"])  # no condition.json there
    assert "no condition.json" in capsys.readouterr().err
