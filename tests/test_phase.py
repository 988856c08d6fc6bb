"""Phase-change detection on synthetic curves with known change points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clamp.metrics.phase import PhaseChange, detect_all, detect_phase_change

LN9 = math.log(9.0)


def logistic(t: np.ndarray, before: float, jump: float, mid: float, tau: float) -> np.ndarray:
    return before + jump / (1.0 + np.exp(-(t - mid) / tau))


def test_clean_sigmoid_recovers_parameters() -> None:
    t = np.arange(0, 2000, 1.0)
    pc = detect_phase_change(t, logistic(t, 0.1, 0.8, 700.0, 40.0))
    assert isinstance(pc, PhaseChange)
    span = t[-1] - t[0]
    assert abs(pc.midpoint - 700.0) < 0.02 * span
    assert pc.onset == pytest.approx(700.0 - 40.0 * LN9, abs=2.0)
    assert pc.end == pytest.approx(700.0 + 40.0 * LN9, abs=2.0)
    assert pc.width == pytest.approx(pc.end - pc.onset)
    assert pc.before == pytest.approx(0.1, abs=1e-3)
    assert pc.after == pytest.approx(0.9, abs=1e-3)
    assert pc.jump == pytest.approx(0.8, abs=1e-3)
    assert pc.direction == "rise"
    assert pc.r2 > 0.999
    d = pc.to_dict()
    assert set(d) >= {"onset", "midpoint", "end", "before", "after", "jump", "width", "direction", "r2", "method"}
    json.dumps(d)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.05, 0.1])
def test_noisy_sigmoid(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(0, 3000, 5.0)
    jump = 0.9
    y = logistic(t, 0.05, jump, 1100.0, 50.0) + rng.normal(0, noise * jump, t.size)
    pc = detect_phase_change(t, y)
    assert pc is not None
    span = t[-1] - t[0]
    assert abs(pc.midpoint - 1100.0) < 0.02 * span
    assert abs(pc.width - 2 * 50.0 * LN9) < 0.05 * span
    assert pc.jump == pytest.approx(jump, rel=0.1)
    assert pc.direction == "rise"


def test_loss_like_drop() -> None:
    """Plateau at 3.0, then a sharp drop at step 1500 to ~1.0, with noise."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 4000, 10.0)
    y = np.where(t < 1500, 3.0, 1.0 + 2.0 * np.exp(-np.clip(t - 1500, 0, None) / 80.0)) + rng.normal(0, 0.05, t.size)
    pc = detect_phase_change(t, y)
    assert pc is not None and pc.direction == "drop"
    assert pc.jump < -1.5
    assert 1450 <= pc.onset <= 1600
    assert 1500 <= pc.midpoint <= 1700
    assert pc.before == pytest.approx(3.0, abs=0.15)
    assert pc.after == pytest.approx(1.0, abs=0.2)
    # Restricting the direction to rises finds nothing; 'drop' finds the same change.
    assert detect_phase_change(t, y, direction="rise") is None
    same = detect_phase_change(t, y, direction="drop")
    assert same is not None and same.midpoint == pytest.approx(pc.midpoint, abs=1.0)


def test_step_function() -> None:
    t = np.arange(0, 1000, 10.0)
    y = np.where(t >= 420, 1.0, 0.0)
    pc = detect_phase_change(t, y)
    assert pc is not None
    assert 410 <= pc.midpoint <= 420
    assert 410 <= pc.onset <= pc.midpoint <= pc.end <= 420  # sharper than the sampling
    assert pc.jump == pytest.approx(1.0, abs=1e-3)


def test_irregular_spacing() -> None:
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 50_000, 400)) ** 1.0
    t = np.concatenate([t[t < 20_000][::4], t[t >= 20_000]])  # much sparser early on
    y = logistic(t, 0.0, 1.0, 31_000.0, 600.0) + rng.normal(0, 0.07, t.size)
    pc = detect_phase_change(t, y)
    assert pc is not None
    assert abs(pc.midpoint - 31_000.0) < 0.02 * (t[-1] - t[0])
    # Shuffled input gives the same answer (sorted internally).
    perm = rng.permutation(t.size)
    pc2 = detect_phase_change(t[perm], y[perm])
    assert pc2 is not None and pc2.midpoint == pytest.approx(pc.midpoint, abs=1e-6 * t[-1])


@pytest.mark.parametrize("n", [20, 200, 2000])
@pytest.mark.parametrize("seed", range(3))
def test_flat_noise_is_none(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert detect_phase_change(np.arange(n), 0.5 + rng.normal(0, 0.1, n)) is None


def test_constant_and_too_short_are_none() -> None:
    assert detect_phase_change(np.arange(100), np.ones(100)) is None
    assert detect_phase_change([0, 1, 2], [0.0, 1.0, 1.0]) is None


def test_slow_linear_ramp_is_not_a_phase_change() -> None:
    """Documented choice: a trend over the whole window is not a phase change -> None."""
    t = np.arange(0, 2000, 2.0)
    assert detect_phase_change(t, t / 2000.0) is None
    rng = np.random.default_rng(0)
    assert detect_phase_change(t, t / 2000.0 + rng.normal(0, 0.03, t.size)) is None


def test_early_transient_is_not_reported_but_later_drop_is() -> None:
    t = np.arange(0, 2000, 2.0)
    rng = np.random.default_rng(0)
    decay = 2.0 + 3.0 * np.exp(-t / 100.0) + rng.normal(0, 0.02, t.size)
    assert detect_phase_change(t, decay) is None  # no plateau before the decay starts
    loss = 2.0 + 3.0 * np.exp(-t / 30.0) - logistic(t, 0.0, 1.0, 800.0, 30.0) + rng.normal(0, 0.03, t.size)
    pc = detect_phase_change(t, loss)
    assert pc is not None and pc.direction == "drop"
    assert abs(pc.midpoint - 800.0) < 0.02 * 2000


def test_nans_are_dropped() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(0, 1000, 1.0)
    y = logistic(t, 0.2, 0.6, 350.0, 15.0) + rng.normal(0, 0.03, t.size)
    y[::7] = np.nan
    y[100:130] = np.nan
    y[5] = np.inf
    t_nan = t.copy()
    t_nan[11] = np.nan
    pc = detect_phase_change(t_nan, y)
    assert pc is not None
    assert abs(pc.midpoint - 350.0) < 0.02 * 1000
    assert all(math.isfinite(v) for v in (pc.onset, pc.midpoint, pc.end, pc.before, pc.after, pc.r2))


def test_min_jump_and_bad_args() -> None:
    t = np.arange(500.0)
    y = logistic(t, 0.0, 0.3, 250.0, 10.0)
    assert detect_phase_change(t, y) is not None
    assert detect_phase_change(t, y, min_jump=0.5) is None
    assert detect_phase_change(t, y, min_jump=0.1) is not None
    with pytest.raises(ValueError):
        detect_phase_change(t, y, direction="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        detect_phase_change(t, y[:-1])


def test_scale_invariance() -> None:
    t = np.arange(0, 2000, 4.0)
    y = logistic(t, 0.1, 0.8, 900.0, 30.0)
    a = detect_phase_change(t, y, scale=1.0)
    b = detect_phase_change(t * 1000 + 5e6, y * 1e-4 - 3.0, scale=1e-4)  # the same curve in other units
    assert a is not None and b is not None
    assert (b.midpoint - 5e6) / 1000 == pytest.approx(a.midpoint, rel=1e-4)
    assert b.jump == pytest.approx(a.jump * 1e-4, rel=1e-4)


def test_detect_all() -> None:
    t = np.arange(1000.0)
    rng = np.random.default_rng(0)
    out = detect_all(
        {
            "acc": (t, logistic(t, 0.0, 1.0, 300.0, 10.0)),
            "flat": (t, rng.normal(0, 0.1, t.size)),
        }
    )
    assert set(out) == {"acc", "flat"}
    assert out["acc"] is not None and abs(out["acc"].midpoint - 300.0) < 5
    assert out["flat"] is None


def test_fit_is_vectorised_on_2000_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost is a handful of vectorised RSS passes, not a sequential search: counted, not timed
    (a wall-clock bound fails on a loaded CI machine; experiments/benchmarks/run.py times it)."""
    import clamp.metrics.phase as phase

    calls = []
    real = phase._profile
    monkeypatch.setattr(phase, "_profile", lambda t, y, mids, taus: calls.append(mids.size) or real(t, y, mids, taus))
    rng = np.random.default_rng(0)
    t = np.arange(2000.0)
    y = logistic(t, 0.0, 1.0, 1300.0, 25.0) + rng.normal(0, 0.05, t.size)
    pc = detect_phase_change(t, y)
    assert pc is not None and abs(pc.midpoint - 1300) < 10
    assert len(calls) <= 16, f"{len(calls)} RSS passes"


def test_loss_with_initial_transient_and_slow_tail_finds_the_middle_drop() -> None:
    """Chance -> short plateau -> phase change -> slow decline: the shape of real loss curves."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 3000, 10, dtype=float)
    transient = 2.5 * np.exp(-t / 60.0)
    drop = 0.7 / (1 + np.exp((t - 450.0) / 30.0))
    tail = 0.25 * np.exp(-(t - 450.0).clip(0) / 800.0)
    y = 0.05 + transient + drop + tail + rng.normal(0, 0.03, t.size)
    pc = detect_phase_change(t, y)
    assert pc is not None and pc.direction == "drop"
    assert 400 < pc.midpoint < 500, pc
    assert "window" in pc.method


@pytest.mark.parametrize("seed", range(4))
def test_chance_level_noise_is_never_a_phase_change(seed: int) -> None:
    """An accuracy at chance (1/32 of 1024 eval sequences) and a quiet per-head score: nothing to report.

    The old rule (jump relative to the curve's own range, fitted on windows) called such curves phase
    changes; the absolute floor (5 % of an accuracy's [0, 1] range, 3 x point-to-point noise) does not.
    """
    from clamp.metrics.phase import phase_change_of

    rng = np.random.default_rng(seed)
    t = np.arange(0, 3001, 50.0)
    chance = rng.binomial(1024, 1 / 32, t.size) / 1024
    assert phase_change_of("val/iw/acc", t, chance) is None
    assert detect_phase_change(t, chance) is None  # unknown scale: the noise floor alone rejects it
    th = np.arange(0, 3001, 100.0)
    assert phase_change_of("task/query_to_match/L1H3", th, 0.2 + rng.normal(0, 0.01, th.size)) is None
    # the same noise on top of a real transition still shows it, at the right place
    rise = 1 / 32 + (0.95 - 1 / 32) / (1 + np.exp(-(t - 450.0) / 40.0)) + (chance - 1 / 32)
    pc = phase_change_of("val/ic/acc", t, rise)
    assert pc is not None and abs(pc.midpoint - 450.0) < 30


def test_small_but_real_jump_needs_the_scale_to_count() -> None:
    """A clean 0.03 -> 0.06 step is 3 points of accuracy: below 5 % of [0, 1], so not a phase change."""
    from clamp.metrics.phase import phase_change_of

    t = np.arange(0, 3001, 50.0)
    y = logistic(t, 0.03, 0.03, 1500.0, 30.0)
    assert detect_phase_change(t, y) is not None  # on its own scale it is a clean transition
    assert phase_change_of("val/iw/acc", t, y) is None


def test_icl_score_bump_of_a_real_natural_text_run() -> None:
    """The ICL score of experiment 1b (natural_text/RESULTS.md), every 250 steps: a wobbly ~1.4-nat drop."""
    icl = [-0.02, 0.56, 0.42, 0.42, 0.43, 0.2, 0.17, -0.08, 0.21, -0.32, -0.72, -1.09, -0.88, -0.97, -1.05, -1.08,
           -1.16, -1.09, -0.97, -1.01, -1.1, -0.96, -1.07, -1.12, -1.14, -1.19, -1.08, -1.09, -1.1, -1.12, -1.1, -1.1,
           -1.22, -1.18, -1.24, -1.08, -0.94]  # fmt: skip
    pc = detect_phase_change(np.arange(len(icl)) * 250.0, np.asarray(icl))
    assert pc is not None and pc.direction == "drop"
    assert 1750 <= pc.onset < pc.midpoint < pc.end <= 3000 and pc.jump == pytest.approx(-1.4, abs=0.15)


def test_emergence_summary_detects_phase_changes_on_icl_scores() -> None:
    from clamp.metrics.callback import EmergenceCallback

    cb = EmergenceCallback()
    cb.history = {"curves/task/icl_score": [(i, v) for i, v in enumerate([0.0] * 10 + [-1.0] * 10)], "curves/task/loss": [(0, 1.0)]}
    assert cb._phase_curves() == ["curves/task/icl_score"]
    assert cb.summarize()["phase_changes"]["curves/task/icl_score"]["direction"] == "drop"


def test_monotone_bound_is_isotonic_regression_and_never_beats_a_sigmoid() -> None:
    """The r2 pre-test is exact: the isotonic fit is the best monotone fit (checked against brute
    force on a small curve) and no profiled sigmoid fits better."""
    import itertools

    import clamp.metrics.phase as phase

    rng = np.random.default_rng(3)
    y = rng.normal(size=7)
    brute = math.inf  # best non-decreasing fit, over every partition into contiguous blocks
    for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, 7), k) for k in range(7)):
        blocks = np.split(y, cuts)
        means = [b.mean() for b in blocks]
        if all(a <= b for a, b in zip(means, means[1:])):
            brute = min(brute, sum(float(((b - m) ** 2).sum()) for b, m in zip(blocks, means)))
    assert phase._monotone_rss(y, "rise") == pytest.approx(brute)
    assert phase._monotone_rss(y, "drop") == pytest.approx(phase._monotone_rss(-y, "rise"))
    t = np.linspace(0, 1, 40)
    for seed in range(5):
        yy = np.random.default_rng(seed).normal(size=40) + np.where(t > 0.5, 1.0, 0.0)
        mids, taus = np.repeat(np.linspace(0, 1, 30), 8), np.tile(np.geomspace(1e-3, 0.3, 8), 30)
        rss, _, _ = phase._profile(t, yy, mids, taus)
        assert phase._monotone_rss(yy, "auto") <= rss.min() + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_monotone_pruning_changes_no_result(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection with the pre-test equals detection without it (every window fitted), on curves with
    and without a transition, where the windowed retries run."""
    import clamp.metrics.phase as phase

    rng = np.random.default_rng(seed)
    t = np.arange(0.0, 3100.0, 100.0)
    curves = [
        rng.normal(0.1, 0.02, t.size),  # a head that never specialises
        logistic(t, 0.05, 0.6, 900.0, 80.0) - 0.0002 * np.maximum(t - 1500, 0) + rng.normal(0, 0.02, t.size),  # rise, then decay
        logistic(t, 2.0, -1.5, 1200.0, 60.0) + 0.5 * np.exp(-t / 200) + rng.normal(0, 0.03, t.size),  # transient into a drop
    ]
    with_bound = [detect_phase_change(t, y, scale=1.0) for y in curves]
    monkeypatch.setattr(phase, "_monotone_rss", lambda y, direction: 0.0)
    assert [detect_phase_change(t, y, scale=1.0) for y in curves] == with_bound


def _two_phase_loss(t: np.ndarray, seed: int = 0) -> np.ndarray:
    """Initial transient -> plateau -> drop near 450 -> plateau -> a second, smaller drop near 3300."""
    rng = np.random.default_rng(seed)
    first = 0.8 / (1 + np.exp((t - 450.0) / 25.0))
    second = 0.15 / (1 + np.exp((t - 3300.0) / 40.0))
    return 0.04 + 1.5 * np.exp(-t / 40.0) + first + second + rng.normal(0, 0.01, t.size)


def test_extending_a_curve_keeps_every_phase_change_it_had_found() -> None:
    """A run resumed 3000 -> 4000 steps: each prefix's phase changes are the first ones of the longer curve, unmoved."""
    from clamp.metrics.phase import phase_change_of, phase_changes_of

    t = np.arange(0, 4001, 20.0)
    y = _two_phase_loss(t)
    full = phase_changes_of("val/ic/loss", t, y)
    assert len(full) == 2, full  # both drops, in time order
    assert abs(full[0].midpoint - 450) < 40 and abs(full[1].midpoint - 3300) < 60, full
    for n in range(8, t.size + 1, 16):
        prefix = phase_changes_of("val/ic/loss", t[:n], y[:n])
        assert prefix == full[: len(prefix)], n
        if t[n - 1] >= 1000:
            assert prefix and prefix[0] == full[0]
    assert phase_change_of("val/ic/loss", t[t <= 3000], y[t <= 3000]) == full[0] == phase_change_of("val/ic/loss", t, y)  # the largest


def test_every_phase_change_has_its_midpoint_inside_its_window_and_a_steady_trend_has_none() -> None:
    from clamp.metrics.phase import phase_changes_of

    t = np.arange(0, 3001, 50.0)
    steps = 0.1 + 0.4 * (t > 1020) + 0.4 * (t > 2020)  # two clean steps between probes
    found = phase_changes_of("task/induction/L1H3", t, steps)
    assert len(found) == 2 and 1000 <= found[0].midpoint <= 1050 and 2000 <= found[1].midpoint <= 2050, found
    for pc in found:
        lo, hi = (float(x) for x in pc.method.split("window ")[1].rstrip(")").split("-"))
        assert lo < pc.onset < pc.midpoint < pc.end < hi
    rng = np.random.default_rng(1)
    trend = 3.0 + 2.5 * np.sqrt(t / 3000) + rng.normal(0, 0.02, t.size)  # a steady concave rise: a trend
    assert phase_changes_of("val/iw/loss", t, trend) == []
    assert phase_changes_of("val/iw/acc", t, rng.binomial(1024, 1 / 32, t.size) / 1024) == []


def test_phase_change_table_lists_every_change_main_curves_first_in_time_order() -> None:
    from clamp.metrics.callback import _markdown_table

    pc = lambda mid: {"onset": mid - 10, "midpoint": mid, "end": mid + 10, "before": 1.0, "after": 0.0}  # noqa: E731
    table = _markdown_table({"task/induction/L1H0": [pc(100)], "val/ic/loss": [pc(900), pc(2000)], "val/ic/acc": [pc(450)], "train/loss": []})
    curves = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    mids = [float(line.split("|")[3]) for line in table.splitlines()[2:]]
    assert curves == ["val/ic/acc", "val/ic/loss", "val/ic/loss", "task/induction/L1H0"] and mids == [450, 900, 2000, 100]
    assert _markdown_table({"val/ic/acc": []}) == "no phase change detected"
