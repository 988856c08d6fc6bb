"""The plateau-then-drop rule (clamp.metrics.plateau) on synthetic curves: what must pass and what must fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clamp.metrics.plateau import LN2, PlateauRule, measure_plateau

STEPS = np.arange(0, 6251, 25, dtype=float)
NOISE = np.random.default_rng(0).normal(0, 0.005, STEPS.size)  # eval noise of 1000 sequences


def plateau_then_sigmoid(t: np.ndarray, t_drop: float = 3500, width: float = 120) -> np.ndarray:
    """ln 5 -> ln 2 quickly, flat at ln 2, then a sigmoid drop to ~0.03 at t_drop: the paper's shape."""
    arrive = LN2 + (math.log(5) - LN2) * np.exp(-t / 150)
    return 0.03 + (arrive - 0.03) / (1 + np.exp((t - t_drop) / width))


def test_flat_plateau_then_abrupt_drop_passes() -> None:
    p = measure_plateau(STEPS, plateau_then_sigmoid(STEPS) + NOISE)
    assert p.plateau_then_drop, p.reason
    assert p.arrived and p.abruptness > 20 and p.plateau_steps > 2000


def test_linear_descent_through_ln2_fails() -> None:
    y = math.log(5) - (math.log(5) - 0.02) * STEPS / STEPS[-1]
    p = measure_plateau(STEPS, y + NOISE)
    assert p.learned and not p.plateau_then_drop
    assert p.abruptness == pytest.approx(1.0, abs=0.3)


def test_soft_exponential_descent_through_ln2_fails() -> None:
    p = measure_plateau(STEPS, math.log(5) * np.exp(-STEPS / 1500) + NOISE)
    assert p.learned and not p.plateau_then_drop and p.abruptness < 2


def test_slow_descent_in_the_band_then_a_mildly_steeper_fall_fails() -> None:
    """The committed Gaussian stand-in's shape: a steady descent through the band, then only ~3x steeper."""
    t = STEPS
    y = np.where(t < 500, math.log(5) - (math.log(5) - 1.15 * LN2) * t / 500, np.nan)
    band = 1.15 * LN2 - 0.1 * (t - 500) / 1000
    after_band = t >= 500
    y = np.where(after_band, band, y)
    knee = 500 + (1.15 * LN2 - 0.85 * LN2) / 0.1 * 1000
    y = np.where(t > knee, 0.85 * LN2 - 0.3 * (t - knee) / 1000, y)
    p = measure_plateau(t, np.maximum(y, 0.02) + NOISE)
    assert p.learned and not p.plateau_then_drop
    assert 2 < p.abruptness < 5


def test_a_curve_that_starts_at_ln2_and_descends_at_once_is_no_plateau() -> None:
    """A clamp that fixes the loss at ln 2 at initialisation: the initial descent must not count as a plateau."""
    p = measure_plateau(STEPS, LN2 * np.exp(-STEPS / 800) + NOISE)
    assert not p.arrived and not p.plateau_then_drop


def test_a_curve_that_never_learns_fails() -> None:
    p = measure_plateau(STEPS, np.full_like(STEPS, LN2) + NOISE)
    assert not p.learned and not p.plateau_then_drop and p.t_learn is None


def test_one_outlier_eval_does_not_decide() -> None:
    y = plateau_then_sigmoid(STEPS) + NOISE
    y[40] = 0.01  # one broken eval on the plateau
    p = measure_plateau(STEPS, y)
    assert p.plateau_then_drop and p.t_learn > 3000


def test_a_stricter_rule_can_reject_what_the_default_accepts() -> None:
    y = plateau_then_sigmoid(STEPS, width=400) + NOISE
    assert measure_plateau(STEPS, y).plateau_then_drop
    assert not measure_plateau(STEPS, y, PlateauRule(min_abruptness=1000)).plateau_then_drop


def test_a_first_eval_above_the_band_counts_as_arriving_though_smoothing_would_hide_it() -> None:
    """Evals every 100 steps that begin while the loss is still falling onto ln 2 (the long factor runs):
    the running median shrinks at the start and would pull the one eval above the band into it."""
    t = np.arange(99, 12000, 100, dtype=float)
    flat = 0.03 + (LN2 - 0.03) / (1 + np.exp((t - 3500) / 120)) + NOISE[: len(t)]  # on the plateau from the first eval
    assert not measure_plateau(t, flat).arrived
    y = flat.copy()
    y[0] = 1.3 * LN2  # the one eval before the loss reached the plateau
    p = measure_plateau(t, y)
    assert p.arrived and p.plateau_then_drop, p.reason
