"""The default run's TensorBoard stays readable: a budget of scalar tags, per-head detail opt-in."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clamp.cli import main
from clamp.metrics.callback import EmergenceCallback
from clamp.scalars import HEADLINE_GROUP, HEADLINE_TAG, headline_scalars, read_scalars

ROOT = Path(__file__).resolve().parents[1]
TAG_BUDGET = 100


def _tiny_default_run(save_dir: Path) -> None:
    """The default experiment, 10 steps and d_model 16, quietly: its run folder lands in ``save_dir``."""
    args = ["fit", "--config", str(ROOT / "experiments" / "induction_default.yaml"), "--trainer.max_steps", "10",
            "--trainer.val_check_interval", "5", "--trainer.logger.init_args.save_dir", str(save_dir),
            "--data.batch_size", "16", "--data.eval_size", "32", "--model.transformer.d_model", "16"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(args)


def test_default_config_writes_at_most_100_scalar_tags(tmp_path: Path) -> None:
    """The default experiment (8 heads, 2 layers), shrunk in width and steps only: headline and circuit tags stay."""
    _tiny_default_run(tmp_path)
    (events,) = tmp_path.glob("*/version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert len(tags) <= TAG_BUDGET, sorted(tags)
    assert {"val/ic/acc", "val/iw/acc", "val/ic/loss", "task/query_to_match/L1H7", "task/induction/max"} <= tags, sorted(tags)
    assert not any("/loss_pos/" in t or t.startswith("task/induction/L") for t in tags)
    # the headline copies form the group Time Series sorts first (it sorts groups by name)
    groups = sorted({t.split("/")[0] for t in tags})
    assert groups[0] == HEADLINE_GROUP, groups
    copies = {t for t in tags if t.startswith(HEADLINE_GROUP + "/")}
    headline = {t for t in tags if HEADLINE_TAG.match(t)}
    assert copies == {f"{HEADLINE_GROUP}/{t}" for t in headline} and {"val/ic/acc", "val/iw/acc", "val/ic/loss"} <= headline, sorted(copies)
    # one step convention: validation at 5 and 10 steps done, as summary.json counts them
    val_steps = [e.step for e in acc.Scalars("val/ic/acc")]
    assert val_steps == [5, 10], val_steps
    assert [e.step for e in acc.Scalars(f"{HEADLINE_GROUP}/val/ic/acc")] == val_steps
    summary = json.loads((events.parent / "summary.json").read_text())
    assert summary["step"] == val_steps[-1]
    # reports read the original tags only
    assert not read_scalars(events.parent)["tag"].str.startswith(HEADLINE_GROUP).any()


def test_headline_group_sorts_before_every_tag_group() -> None:
    """Whatever else a run logs (letters, digits >= 1, underscores, capitals), the headline group sorts first."""
    others = ["clamp", "curves", "task", "train", "val", "heatmap", "1_x", "A", "_private", "Zeta", "lr-AdamW", "epoch"]
    assert sorted([*others, HEADLINE_GROUP])[0] == HEADLINE_GROUP
    assert headline_scalars({"val/ic/acc": 1.0, "val/ic/loss": 2.0, "train/loss": 3.0, "train/acc": 4.0, "task/induction/max": 5.0}) == {
        f"{HEADLINE_GROUP}/val/ic/acc": 1.0, f"{HEADLINE_GROUP}/val/ic/loss": 2.0, f"{HEADLINE_GROUP}/train/loss": 3.0}  # fmt: skip


def test_detail_names_its_choices() -> None:
    with pytest.raises(ValueError, match="detail='all'; valid: 'summary', 'heads', 'full'"):
        EmergenceCallback(detail="all")


def test_next_hints_name_the_venvs_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off PATH, the hints print the environment's own ``clamp`` (``.venv/bin/clamp``), which runs without activating it."""
    from clamp.console import run_summary_text

    monkeypatch.setenv("PATH", "/nonexistent")
    text = run_summary_text(tmp_path / "runs" / "x" / "version_0", None)
    venv_clamp = Path(sys.executable).parent / "clamp"
    assert venv_clamp.is_file() and "  clamp report" not in text
    assert any(line.strip().startswith(str(venv_clamp.relative_to(Path.cwd())) if venv_clamp.is_relative_to(Path.cwd()) else str(venv_clamp)) for line in text.splitlines())


def _screenshot_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboard_screenshot", ROOT / "experiments" / "dashboard" / "screenshot.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_screenshot_reads_cards_in_page_order_and_finds_the_headline_copy() -> None:
    """The script's first-screen rule, without a browser: the copy counts, a card past the first screen does not."""
    shot = _screenshot_module()
    dom = "".join(f'<span class="tag" title="{t}">x</span>' for t in ["clamp/alpha/a", "curves/random/x", f"{HEADLINE_GROUP}/val/ic/acc", "val/ic/acc"])
    cards = shot.card_titles(dom)
    assert cards == ["clamp/alpha/a", "curves/random/x", f"{HEADLINE_GROUP}/val/ic/acc", "val/ic/acc"]
    assert shot.first_screen_card(cards, "val/ic/acc", 6) == 2
    assert shot.first_screen_card(cards, "val/ic/acc", 2) is None
    assert shot.first_screen_card(cards, "val/iw/acc", 6) is None


def test_screenshot_counts_a_cards_curve_points_not_its_icons() -> None:
    """A card whose chart draws nothing (WebGL in a headless worker) must fail the check, not pass on its icons."""
    shot = _screenshot_module()
    icon = '<path d="M14,4v5c0,1.12,0.37,2.16,1,3H9L4,4"></path>'
    curve = '<path d="M43.5,231.9L47.5,210.8L51.5,197.3"></path>'
    dom = f'<span class="tag" title="a">a</span>{icon}<span class="tag" title="b">b</span>{icon}{curve}'
    assert shot.drawn_points(dom, "a") == 0 and shot.drawn_points(dom, "b") == 3 and shot.drawn_points(dom, "c") == 0


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")), reason="no chromium binary")
def test_screenshot_shows_val_ic_acc_on_the_first_screen(tmp_path: Path) -> None:
    """TensorBoard in headless Chromium, on a 10-step default run: the script exits 0 and writes the PNG."""
    _tiny_default_run(tmp_path)
    (run,) = tmp_path.glob("*/version_0")
    png = tmp_path / "dash.png"
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "dashboard" / "screenshot.py"), str(run), "--out", str(png)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert png.stat().st_size > 10_000 and "val/ic/acc: card" in res.stdout and "curve drawn" in res.stdout
