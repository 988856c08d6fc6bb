"""`clamp report --group-by condition`: seeds pooled per sweep condition, from exported curves.csv folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clamp.cli import main
from clamp.report_groups import band, band_limits, clamp_windows, group_report, learning_speed, load_groups, mean_spread, write_curves_csv

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
    row = next(line for line in md.splitlines() if line.startswith("| none | learning speed |"))
    assert "| 160 [110, 210] (n=2) | 360 [310, 410] (n=2) | +200 [+100, +300] (n=2) |" in row  # seeds at 110, 210 vs 310, 410
    data = json.loads((out / "groups.json").read_text())
    assert data["learning_speed"]["clamped"]["values"] == [110.0, 210.0] and data["baseline"] == "clamped"
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "rep"), "--group-by", "condition"])  # no condition.json there
    assert "no condition.json" in capsys.readouterr().err


def _run_full(root: Path, condition: str, seed: int, mid: float, last: int = 990, loss: bool = True, noise: float = 0.0) -> Path:
    """A run folder with val/ic/acc (rising at ``mid``), optionally val/ic/loss, and two layers x two heads of
    task/query_to_match: layer 0 head 1 at 0.6 throughout, layer 1 head 0 rising to 0.9 at ``mid``."""
    d = root / condition / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "condition.json").write_text(json.dumps({"experiment": "s", "condition": condition, "seed": seed, "finished": True}))
    steps = np.arange(0, last + 1, 10)
    rise = 1 / (1 + np.exp(-(steps - mid) / 20.0))
    rng = np.random.default_rng(seed)
    curves = {"val/ic/acc": np.clip(0.5 + 0.5 * rise + rng.normal(0, noise, steps.size), 0, 1)}
    if loss:
        curves["val/ic/loss"] = LN2 * (1 - rise) + 0.01
    for layer in range(2):
        for head in range(2):
            curves[f"task/query_to_match/L{layer}H{head}"] = (0.1 + 0.8 * rise) if (layer, head) == (1, 0) else np.full(steps.size, 0.6 if (layer, head) == (0, 1) else 0.1)
    rows = [{"step": s, "tag": t, "value": v} for t, vals in curves.items() for s, v in zip(steps, vals, strict=True)]
    scalars = pd.DataFrame(rows)
    mixed = scalars[scalars["tag"].str.contains("/L")].groupby("step")["value"].max()  # what the callback logs as /max
    scalars = pd.concat([scalars, pd.DataFrame({"step": mixed.index, "tag": "task/query_to_match/max", "value": mixed.to_numpy()})])
    write_curves_csv(scalars, d / "curves.csv", keep=["*"])
    return d


def test_without_a_loss_tag_no_keyerror_and_defaults_hold_accuracy_and_head_metrics_per_layer(tmp_path: Path) -> None:
    for seed in range(2):
        _run_full(tmp_path / "runs", "base", seed, 300, loss=False)
        _run_full(tmp_path / "runs", "slow", seed, 600, loss=False)
    out = group_report([str(tmp_path / "runs")], str(tmp_path / "rep"), quiet=True)  # was: KeyError 'learning_speed'
    data = json.loads((out / "groups.json").read_text())
    assert data["speed_tag"] is None and "Learning speed: not computed" in (out / "groups.md").read_text()
    assert "val/ic/acc" in data["tags"]
    assert {"task/query_to_match/L0/max", "task/query_to_match/L1/max"} <= set(data["tags"])
    assert "task/query_to_match/max" not in data["tags"]  # the layer-mixing max gives way to the per-layer ones
    # per layer: layer 0's best head stays at 0.6, layer 1's rises to ~0.9; the mixed max would start at 0.6
    run = load_groups([tmp_path / "runs"])["base"][0]
    assert run.curve("task/query_to_match/L0/max")[1] == pytest.approx(np.full(100, 0.6))
    assert run.curve("task/query_to_match/L1/max")[1][0] == pytest.approx(0.1, abs=1e-3)
    assert (out / "group_task_query_to_match_L1_max.png").is_file()


def test_learning_speed_once_differences_with_cis_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(3):
        _run_full(tmp_path / "runs", "a_base", seed, 300 + 10 * seed)
        _run_full(tmp_path / "runs", "b_late", seed, 600 + 10 * seed)
        _run_full(tmp_path / "runs", "c_same", seed, 300 + 10 * seed)
    out = tmp_path / "rep"
    main(["report", str(tmp_path / "runs"), "--group-by", "condition", "--out", str(out), "--tags", "val/*", "--baseline", "a_base"])
    printed = capsys.readouterr().out
    data = json.loads((out / "groups.json").read_text())
    rows = {(r["condition"], r["measure"], r["tag"]): r for r in data["differences"]}
    speed_rows = [k for k in rows if k[1] == "learning speed"]
    assert speed_rows == [("b_late", "learning speed", "val/ic/loss"), ("c_same", "learning speed", "val/ic/loss")]  # once, not per tag
    late = rows[("b_late", "phase-change midpoint", "val/ic/acc")]["difference"]
    assert late["estimate"] == pytest.approx(300, abs=5) and late["low"] > 0 and late["n"] == 3
    same = rows[("c_same", "learning speed", "val/ic/loss")]["difference"]
    assert same["low"] <= 0 <= same["high"]
    assert "| b_late | learning speed | `val/ic/loss` |" in printed and "Δ vs baseline [95 % CI]" in printed
    csv = pd.read_csv(out / "groups.csv")
    assert set(csv["measure"]) == {"learning speed", "phase-change midpoint", "final"} and (csv["baseline"] == "a_base").all()
    for tag in data["tags"].values():
        assert "learning_speed" not in tag["conditions"]["b_late"]
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "runs"), "--group-by", "condition", "--out", str(out), "--baseline", "nope"])
    assert "--baseline 'nope': no such condition; valid: ['a_base', 'b_late', 'c_same']" in capsys.readouterr().err


def test_band_stays_inside_a_bounded_scores_range(tmp_path: Path) -> None:
    for seed in range(3):
        _run_full(tmp_path / "runs", "c", seed, 300, noise=0.2)
    runs = load_groups([tmp_path / "runs"])["c"]
    steps, mean, std, n = band(runs, "val/ic/acc")
    assert (mean + std).max() > 1.0  # an unclipped band would leave [0, 1]
    _, lo, hi = band_limits(runs, "val/ic/acc")
    assert hi.max() <= 1.0 and lo.min() >= 0.0 and (lo <= mean + 1e-12).all() and (hi >= mean - 1e-12).all()


def test_a_much_shorter_run_is_named_and_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(3):
        _run_full(tmp_path / "runs", "a", seed, 300, last=990 if seed else 980)
    _run_full(tmp_path / "runs", "a", 3, 300, last=10)
    out = group_report([str(tmp_path / "runs")], str(tmp_path / "rep"), tags=["val/ic/acc"], quiet=True)
    err = capsys.readouterr().err
    assert "Left out 1 run(s) much shorter than the others" in err and "a/seed3 (ends at 10)" in err
    assert "Compared on steps 0-980" in err and "a/seed0 (ends at 980)" in err and "a/seed1" not in err
    data = json.loads((out / "groups.json").read_text())
    assert data["excluded_short_runs"] == {"a/seed3": 10} and data["common_last_step"] == 980
    assert data["tags"]["val/ic/acc"]["conditions"]["a"]["seeds"] == [0, 1, 2]
