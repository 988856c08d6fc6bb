"""Every pre-registered verdict rule of the Singh et al. 2024 report has a case that passes and one that fails."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("singh_verdicts", ROOT / "experiments" / "singh2024" / "verdicts.py")
V = importlib.util.module_from_spec(_spec)
sys.modules["singh_verdicts"] = V
_spec.loader.exec_module(V)

LN2 = math.log(2)
STEPS = np.arange(0, 6001, 50, dtype=float)


def noisy(y: np.ndarray, seed: int) -> np.ndarray:
    return y + np.random.default_rng(seed).normal(0, 0.004, y.shape)


def plateau_then_drop(t: np.ndarray, t_drop: float = 3000) -> np.ndarray:
    """ln 5 down to ln 2 within 500 steps, flat, then a sigmoid drop to ~0 over ~600 steps."""
    descent = LN2 + (math.log(5) - LN2) * np.exp(-t / 120)
    return np.minimum(descent, LN2 / (1 + np.exp((t - t_drop) / 120)) + 0.02 + (descent - LN2))


def linear_through_ln2(t: np.ndarray) -> np.ndarray:
    return np.maximum(math.log(5) - (math.log(5) - 0.02) * t / 5000, 0.02)


def test_tally_thresholds() -> None:
    assert V.tally([True] * 4 + [False]) == V.REPRODUCED
    assert V.tally([True] * 3 + [False] * 2) == V.PARTLY
    assert V.tally([True] * 2 + [False] * 3) == V.NOT
    assert V.tally([]) == V.NOT


def test_finding1_plateau_then_drop_passes_and_linear_descent_fails() -> None:
    good = [(STEPS, noisy(plateau_then_drop(STEPS, 2500 + 300 * k), k)) for k in range(5)]
    v, found = V.finding1(good)
    assert v.status == V.REPRODUCED and all(p.plateau_then_drop for p in found)
    bad = [(STEPS, noisy(linear_through_ln2(STEPS), k)) for k in range(5)]
    v, found = V.finding1(bad)
    assert v.status == V.NOT and not any(p.plateau_then_drop for p in found)


def test_finding1_mixed_seeds_are_partly_reproduced() -> None:
    curves = [(STEPS, noisy(plateau_then_drop(STEPS), k)) for k in range(3)] + [(STEPS, noisy(linear_through_ln2(STEPS), k)) for k in range(2)]
    assert V.finding1(curves)[0].status == V.PARTLY


def test_finding2_diverse_dominant_settled_heads_pass_and_a_tied_top_fails() -> None:
    final = np.array([0.85, 0.6, 0.4, 0.35, 0.1, 0.05, 0.02, 0.0])
    assert V.finding2([final] * 5, [final - 0.01] * 5, 0.2, "null").status == V.REPRODUCED
    tied = final.copy()
    tied[1] = 0.83  # gap 0.02 < 0.1: no dominant head
    assert V.finding2([tied] * 5, [tied] * 5, 0.2, "null").status == V.NOT
    rising = final.copy()
    assert V.finding2([rising] * 5, [rising - 0.2] * 5, 0.2, "null").status == V.NOT  # still rising at the end
    below_null = final.copy()
    assert V.finding2([below_null] * 5, [below_null] * 5, 0.7, "null").status == V.NOT  # one head above a high null


def test_finding3_redundant_additive_passes_and_a_weaker_best_single_head_fails() -> None:
    s = [0.8, 0.5, 0.3, 0.1]
    good = V.finding3_seed(s, [0.95, 0.8, 0.6, 0.4], 0.99, [0.97, 0.98, 0.99, 0.99], [1.4, 0.4, 0.1, 0.05])
    assert good["pass"] and V.finding3([good] * 5).status == V.REPRODUCED
    bad = V.finding3_seed(s, [0.7, 0.85, 0.6, 0.4], 0.99, [0.97, 0.98, 0.99, 0.99], [1.4, 0.4, 0.1, 0.05])
    assert not bad["pass"] and V.finding3([bad] * 5).status == V.NOT
    non_monotone = V.finding3_seed(s, [0.95, 0.8, 0.6, 0.4], 0.99, [0.97, 0.98, 0.99, 0.99], [1.4, 0.4, 0.5, 0.05])
    assert not non_monotone["pass"]


def test_finding4_fast_alone_strong_in_full_passes_and_the_reverse_fails() -> None:
    good = {s: V.finding4_seed({0: 1000.0, 3: 2000.0}, {0: 0.8, 3: 0.2}) for s in range(3)}
    assert V.finding4(good).status == V.REPRODUCED
    reverse = {s: V.finding4_seed({0: 2000.0, 3: 1000.0}, {0: 0.8, 3: 0.2}) for s in range(3)}
    assert V.finding4(reverse).status == V.NOT
    never = {s: V.finding4_seed({0: 1000.0, 3: None}, {0: 0.8, 3: 0.2}) for s in range(3)}
    assert V.finding4(never).status == V.NOT
    three = V.finding4_seed({0: 1000.0, 1: 1500.0, 2: 2500.0}, {0: 0.9, 1: 0.5, 2: 0.1})
    assert three["pass"] and three["rho"] == pytest.approx(-1.0)


def test_finding5_clamps_similar_few_and_slow_all_pass_else_fail() -> None:
    good = {s: V.finding5_clamps_seed(2000, 1800, 1900, None) for s in range(3)}
    assert V.finding5_clamps(good).status == V.REPRODUCED
    no_slowdown = {s: V.finding5_clamps_seed(2000, 1800, 1900, 1950) for s in range(3)}
    assert V.finding5_clamps(no_slowdown).status == V.NOT
    different_few = {s: V.finding5_clamps_seed(2000, 1000, 1900, None) for s in range(3)}
    assert V.finding5_clamps(different_few).status == V.NOT


def test_finding5_paths_needs_both_key_and_value_heads() -> None:
    assert V.finding5_paths({0: ["K", "V"], 1: ["K", "mixed"], 2: ["K", "K", "V"]}).status == V.REPRODUCED
    assert V.finding5_paths({0: ["K", "K"], 1: ["K"], 2: ["K", "K", "V"]}).status == V.NOT


def test_finding6_smooth_one_left_and_plateau_many_left_pass_a_curve_starting_at_ln2_fails() -> None:
    smooth = lambda k: (STEPS, noisy(0.02 + (math.log(5) - 0.02) * np.exp(-STEPS / 400), k))  # noqa: E731
    plateau = lambda k: (STEPS, noisy(plateau_then_drop(STEPS), k))  # noqa: E731
    left = {"match": 1, "none": 3}
    v, _ = V.finding6({"match": [smooth(k) for k in range(3)], "none": [plateau(k) for k in range(3)]}, left)
    assert v.status == V.REPRODUCED
    v, _ = V.finding6({"match": [plateau(k) for k in range(3)], "none": [plateau(k) for k in range(3)]}, left)
    assert v.status != V.REPRODUCED
    # the copy clamp: the loss starts at ln 2 and descends at once; that initial descent is no plateau
    at_ln2 = lambda k: (STEPS, noisy(LN2 * np.exp(-STEPS / 800) + 0.01, k))  # noqa: E731
    v, found = V.finding6({"copy": [at_ln2(k) for k in range(3)]}, {"copy": 2})
    assert v.status == V.NOT and not any(p.arrived for p in found["copy"])


def _group(name: str, plain: float, patterns_kept: float, values_kept: float, base: float = 1.0) -> dict:
    return {"group": name, "base": {"acc": base}, "plain": {"acc": plain}, "patterns_preserved": {"acc": patterns_kept}, "values_preserved": {"acc": values_kept}}


def test_finding5_grouped_paths_passes_on_key_path_previous_token_heads_and_value_path_others() -> None:
    seed = [_group("previous-token heads", 0.5, 0.98, 0.55), _group("other heads", 0.7, 0.72, 0.97)]
    per = {s: V.finding5_grouped_seed(seed) for s in range(5)}
    assert V.path_kind(seed[0]) == "K" and V.path_kind(seed[1]) == "V"
    assert V.finding5_grouped(per).status == V.REPRODUCED


def test_finding5_grouped_paths_fails_when_the_others_do_not_matter_or_paths_are_mixed() -> None:
    redundant = [_group("previous-token heads", 0.5, 0.98, 0.55), _group("other heads", 0.99, 0.99, 1.0)]  # ablating them costs nothing
    mixed = [_group("previous-token heads", 0.5, 0.7, 0.6), _group("other heads", 0.7, 0.72, 0.97)]
    assert V.path_kind(redundant[1]) == "none" and V.path_kind(mixed[0]) == "mixed"
    per = {0: V.finding5_grouped_seed(redundant), 1: V.finding5_grouped_seed(mixed), 2: V.finding5_grouped_seed(mixed)}
    assert V.finding5_grouped(per).status == V.NOT


# ---------------------------------------------------------------------------------------- finding 7
def _f7(b_classes: list[float], b_labels: list[float], c_classes: list[float], c_labels: list[float]) -> str:
    speeds = {("B", "c200_l5"): b_classes, ("B", "c50_l15"): b_labels, ("C", "c200_l5"): c_classes, ("C", "c50_l15"): c_labels}
    return V.finding7(speeds)[0]


def test_finding7_needs_each_halfs_interval_above_zero() -> None:
    slow, fast = [900.0, 950.0, 1000.0, 920.0, 980.0], [500.0, 540.0, 520.0, 560.0, 510.0]
    close = [890.0, 960.0, 925.0, 990.0, 935.0]  # mean 10 steps below `slow`'s, intervals straddling 0
    assert _f7(slow, fast, fast, slow) == V.REPRODUCED
    assert _f7(slow, close, fast, slow) == V.PARTLY  # B's point estimate points the right way, its interval does not resolve it
    assert _f7(fast, slow, fast, slow) == V.PARTLY  # B reversed, C resolved
    assert _f7(fast, slow, slow, fast) == V.NOT  # both reversed
    assert _f7(slow, close, slow, close) == V.NOT  # neither resolved
    assert _f7([], [], [], []) == V.NOT  # nothing ran
