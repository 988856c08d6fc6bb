"""clamp.stats: percentile-bootstrap intervals over seeds (coverage, differences, n=1, missing values, determinism)."""

from __future__ import annotations

import numpy as np
import pytest

from clamp.stats import bootstrap_diff, bootstrap_mean


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    trials = 300
    hits = sum(bootstrap_mean(rng.normal(5.0, 2.0, 40).tolist(), resamples=2000, seed=i).excludes(5.0) is False for i in range(trials))
    # the percentile bootstrap under-covers slightly at n=40 (~0.93); a broken interval would be far off
    assert 0.89 <= hits / trials <= 0.98


def test_interval_width_shrinks_with_n_and_contains_the_estimate() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_mean(rng.normal(0, 1, 10).tolist())
    large = bootstrap_mean(rng.normal(0, 1, 1000).tolist())
    assert small.low < small.estimate < small.high and large.low < large.estimate < large.high
    assert (large.high - large.low) < 0.3 * (small.high - small.low)


def test_difference_excludes_zero_when_means_differ_and_includes_it_when_equal() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(400, 30, 5).tolist(), rng.normal(600, 30, 5).tolist()
    far = bootstrap_diff(a, b)
    assert far.excludes(0.0) and far.low > 0 and far.estimate == pytest.approx(np.mean(b) - np.mean(a))
    same = bootstrap_diff(a, rng.normal(400, 30, 5).tolist())
    assert not same.excludes(0.0) and same.low < 0 < same.high


def test_n1_and_missing_values_are_explicit() -> None:
    one = bootstrap_mean([3.0])
    assert (one.estimate, one.low, one.high, one.n) == (3.0, None, None, 1) and "no confidence interval" in one.note
    assert one.format(integer=True) == "3 (n=1, no CI)"
    never = bootstrap_mean([100.0, None, 120.0, float("nan")])
    assert never.n == 2 and never.missing == 2 and never.estimate == pytest.approx(110.0)
    assert never.format(integer=True, missing_word="never").endswith("(n=2, 2 never)")
    empty = bootstrap_mean([None, None])
    assert empty.estimate is None and empty.missing == 2 and empty.format() == "– (n=0, 2 none)"
    diff = bootstrap_diff([1.0], [2.0, 3.0])
    assert diff.estimate == pytest.approx(1.5) and diff.low is None and "n=1" in diff.note
    with pytest.raises(ValueError, match="level=1.5"):
        bootstrap_mean([1.0, 2.0], level=1.5)


def test_same_seed_same_interval_other_seed_differs() -> None:
    vals = np.random.default_rng(3).normal(0, 1, 8).tolist()
    assert bootstrap_mean(vals, seed=7) == bootstrap_mean(vals, seed=7)
    assert bootstrap_diff(vals, vals[::-1], seed=7) == bootstrap_diff(vals, vals[::-1], seed=7)
    assert bootstrap_mean(vals, seed=7).low != bootstrap_mean(vals, seed=8).low


def test_bootstrap_diff_of_medians_ignores_one_wild_value_that_moves_the_mean() -> None:
    base = [1.0, 1.1, 0.9, 1.0, 1.05]
    other = [2.0, 2.1, 1.9, 2.0, 500.0]
    med = bootstrap_diff(base, other, statistic="median")
    mean = bootstrap_diff(base, other)
    assert abs(med.estimate - 1.0) < 1e-9 and med.low > 0.5  # the upper bound may resample the wild value
    assert mean.estimate > 90


def test_bootstrap_diff_refuses_an_unknown_statistic() -> None:
    import pytest

    with pytest.raises(ValueError, match="statistic='mode'.*median"):
        bootstrap_diff([1.0, 2.0], [3.0, 4.0], statistic="mode")
