"""``clamp report`` end to end on real TensorBoard event files of two fake runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from clamp.report import load_runs, main, report

STEPS = np.arange(0, 1001, 10)
MIDS = {"expA": 300.0, "expB": 600.0}
TOP_HEAD = {"expA": (1, 2), "expB": (0, 3)}


def _sigmoid(t: np.ndarray, mid: float, tau: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(t - mid) / tau))


def _write_run(root: Path, experiment: str, seed: int) -> Path:
    """Accuracy rising at MIDS[experiment], matching loss drop, 2x4 per-head scores."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(seed)
    run_dir = root / experiment / "version_0"
    mid = MIDS[experiment]
    acc = 0.1 + 0.85 * _sigmoid(STEPS, mid, 20.0) + rng.normal(0, 0.02, STEPS.size)
    val_loss = 3.0 - 2.0 * _sigmoid(STEPS, mid, 20.0) + rng.normal(0, 0.03, STEPS.size)
    train_loss = val_loss + 0.05 + rng.normal(0, 0.05, STEPS.size)
    writer = SummaryWriter(str(run_dir))
    for i, step in enumerate(STEPS.tolist()):
        writer.add_scalar("val/induction/acc", acc[i], step)
        writer.add_scalar("val/induction/loss", val_loss[i], step)
        writer.add_scalar("train/loss", train_loss[i], step)
        if experiment == "expA":
            writer.add_scalar("val/only_a/acc", 0.5, step)  # not in every run: not a default main tag
        if step % 50 == 0:
            for layer in range(2):
                for head in range(4):
                    score = 0.1 + 0.02 * (layer * 4 + head)
                    if (layer, head) == TOP_HEAD[experiment]:
                        score += 0.7 * _sigmoid(np.array(step, dtype=float), mid, 20.0)
                    writer.add_scalar(f"induction/L{layer}H{head}", float(score), step)
    writer.close()
    return run_dir


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed, experiment in enumerate(MIDS):
        _write_run(root, experiment, seed)
    return root


@pytest.fixture(scope="module")
def out_dir(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    result = report([str(runs_root)], out=str(out))  # a parent dir: run dirs found recursively
    assert result == out
    return out


def test_load_runs(runs_root: Path) -> None:
    runs = load_runs([runs_root / "expA" / "version_0", runs_root / "expB"])
    assert list(runs) == ["expA/version_0", "expB/version_0"]
    df = runs["expA/version_0"]
    assert list(df.columns) == ["step", "tag", "value"]
    acc = df[df["tag"] == "val/induction/acc"]
    assert len(acc) == STEPS.size and acc["step"].tolist() == STEPS.tolist()


def test_pngs_are_valid_images(out_dir: Path) -> None:
    from PIL import Image

    expected = [
        "curves_val_induction_acc.png",
        "curves_val_induction_loss.png",
        "curves_train_loss.png",
        "heatmap_induction.png",
    ]
    for name in expected:
        path = out_dir / name
        assert path.is_file(), name
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert not (out_dir / "curves_val_only_a_acc.png").exists()


def _summary_midpoint(md: str, run: str) -> float:
    """First phase-change midpoint in the run's summary-table row (val/induction/acc column)."""
    row = next(line for line in md.splitlines() if line.startswith(f"| {run} |"))
    m = re.search(r"\| (\d+) \((\d+)→(\d+), Δ", row)
    assert m is not None, row
    return float(m.group(1))


def test_markdown(out_dir: Path) -> None:
    md = (out_dir / "report.md").read_text()
    for run, mid in (("expA/version_0", 300), ("expB/version_0", 600)):
        assert run in md
        assert abs(_summary_midpoint(md, run) - mid) <= 15
    assert "## Heads: induction" in md
    assert "| expA/version_0 | 1 | L1H2 |" in md
    assert "| expB/version_0 | 1 | L0H3 |" in md
    assert "![val/induction/acc](curves_val_induction_acc.png)" in md


def test_json(out_dir: Path) -> None:
    data = json.loads((out_dir / "report.json").read_text())
    assert data["main_tags"] == ["val/induction/acc", "val/induction/loss", "train/loss"]
    assert data["head_families"] == ["induction"]
    for experiment, mid in MIDS.items():
        run = data["runs"][f"{experiment}/version_0"]
        acc = run["tags"]["val/induction/acc"]
        assert acc["final_step"] == 1000
        assert acc["final"] == pytest.approx(0.95, abs=0.08)
        pc = acc["phase_change"]
        assert pc["direction"] == "rise" and abs(pc["midpoint"] - mid) <= 15
        assert pc["onset"] < pc["midpoint"] < pc["end"]
        assert pc["jump"] == pytest.approx(0.85, abs=0.1)
        loss_pc = run["tags"]["val/induction/loss"]["phase_change"]
        assert loss_pc["direction"] == "drop" and abs(loss_pc["midpoint"] - mid) <= 15
        heads = run["heads"]["induction"]
        assert (heads["n_layers"], heads["n_heads"]) == (2, 4)
        assert len(heads["final"]) == 8
        top = heads["top"][0]
        assert (top["layer"], top["head"]) == TOP_HEAD[experiment]
        assert top["final"] == pytest.approx(max(heads["final"].values()))
        assert top["phase_change"] is not None and abs(top["phase_change"]["midpoint"] - mid) <= 30


def test_tag_patterns_and_cli(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    main([str(runs_root / "expA"), str(runs_root / "expB"), "--out", str(out), "--tags", "induction/L1H*", "val/only_a/*"])
    data = json.loads((out / "report.json").read_text())
    assert "induction/L1H2" in data["main_tags"] and "val/only_a/acc" in data["main_tags"]
    assert (out / "curves_induction_L1H2.png").is_file()
    assert "val/only_a/acc" not in data["runs"]["expB/version_0"]["tags"]


def test_errors_name_the_problem(runs_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        report([str(missing)], out=str(tmp_path / "o1"))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        report([str(empty)], out=str(tmp_path / "o2"))
    with pytest.raises(ValueError, match=r"no_such/\*.*available tags:.*val/induction/acc"):
        report([str(runs_root)], out=str(tmp_path / "o3"), tags=["no_such/*"])
    with pytest.raises(SystemExit):  # the CLI turns these into a usage error, not a traceback
        main([str(missing), "--out", str(tmp_path / "o4")])


def _write_small_run(run_dir: Path, last_step: int, families: dict[str, float] | None = None) -> Path:
    """A run logging val/x/acc every 10 steps to ``last_step`` and, per family, one head rising at the given midpoint."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for step in range(0, last_step + 1, 10):
        writer.add_scalar("val/x/acc", float(0.1 + 0.8 * _sigmoid(np.array(step, float), 300.0, 20.0)), step)
        for family, mid in (families or {}).items():
            for head in range(2):
                score = 0.05 + (0.9 * _sigmoid(np.array(step, float), mid, 15.0) if head == 1 else 0.0)
                writer.add_scalar(f"{family}/L0H{head}", float(score), step)
    writer.close()
    return run_dir


def test_head_sections_in_emergence_order_with_heads_figure_and_progress_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_small_run(tmp_path / "r" / "version_0", 1000, {"task/label_to_exemplar": 700.0, "task/query_to_match": 200.0})
    out = tmp_path / "out"
    main([str(run), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert md.index("## Heads: task/query_to_match") < md.index("## Heads: task/label_to_exemplar")  # formed first, not alphabetical
    assert (out / "heads_over_training.png").stat().st_size > 10_000 and "(heads_over_training.png)" in md
    assert json.loads((out / "report.json").read_text())["head_families"] == ["task/query_to_match", "task/label_to_exemplar"]
    err = capsys.readouterr().err
    assert "clamp report: reading 1 run folder(s)" in err


def test_a_much_shorter_run_is_named_and_left_out_not_cutting_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, last in (("a", 1000), ("b", 1000), ("c", 990), ("tiny", 10)):
        _write_small_run(tmp_path / "runs" / name / "version_0", last)
    out = tmp_path / "out"
    report([str(tmp_path / "runs")], out=str(out))
    err = capsys.readouterr().err
    assert "Left out 1 run(s) much shorter" in err and "tiny/version_0 (ends at 10)" in err
    assert "Compared on steps 0-990" in err and "c/version_0 (ends at 990)" in err and "a/version_0 (ends" not in err
    data = json.loads((out / "report.json").read_text())
    assert "tiny/version_0" not in data["runs"] and data["excluded_short_runs"] == {"tiny/version_0": 10}
    assert data["runs"]["a/version_0"]["tags"]["val/x/acc"]["final_step"] == 990


def test_help_lists_group_options_and_they_need_group_by(runs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--group-by" in text and "--speed_tag" in text and "--baseline" in text
    with pytest.raises(SystemExit):
        main([str(runs_root), "--baseline", "none"])
    assert "--baseline only apply to a grouped report; add --group-by condition" in capsys.readouterr().err
