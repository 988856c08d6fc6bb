"""Bootstrap confidence intervals over seeds: a group's mean and the difference of two groups' means.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13), seeded, numpy only: resample the finite
values of a group with replacement ``resamples`` times, take the mean of each resample, and read the
interval off the quantiles of those means. A difference resamples the two groups independently.

Values that are ``None`` or not finite are *missing*, not dropped silently: a run whose loss never
fell below the learning-speed threshold has no learning speed, and it is counted in ``missing`` and
printed ("1 never"), because leaving it out biases the mean towards the runs that did learn.
With fewer than two finite values there is no interval (``low``/``high`` None, ``note`` says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval; ``n`` finite values used, ``missing`` values that had none."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int
    missing: int = 0
    level: float = LEVEL
    note: str = ""

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval exists and ``value`` lies outside it (e.g. a difference that is not 0)."""
        return self.low is not None and self.high is not None and not (self.low <= value <= self.high)

    def format(self, digits: int = 3, integer: bool = False, signed: bool = False, missing_word: str = "none") -> str:
        """``est [low, high] (n=3)``; ``est (n=1, no CI)``; ``– (n=0)``; ``, 1 never`` appended for missing values."""
        tail = f", {self.missing} {missing_word}" if self.missing else ""
        if self.estimate is None:
            return f"– (n=0{tail})"
        sign = "+" if signed else ""
        f = (lambda v: f"{v:{sign}.0f}") if integer else (lambda v: f"{v:{sign}.{digits}g}")
        if self.low is None or self.high is None:
            return f"{f(self.estimate)} (n={self.n}, no CI{tail})"
        return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}] (n={self.n}{tail})"


def finite_values(values: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """The finite values as an array, and how many were None / NaN / inf."""
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return vals, len(values) - int(vals.size)


def _check(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: must be in (0, 1), e.g. 0.95")
    if resamples < 100:
        raise ValueError(f"resamples={resamples}: must be >= 100 (10,000 is the default)")


STATISTICS = {"mean": np.mean, "median": np.median}


def _statistic(name: str):
    if name not in STATISTICS:
        raise ValueError(f"statistic={name!r}: choose one of {sorted(STATISTICS)}")
    return STATISTICS[name]


def _resampled_means(vals: np.ndarray, resamples: int, rng: np.random.Generator, statistic: str = "mean") -> np.ndarray:
    """The ``statistic`` of ``resamples`` bootstrap resamples of ``vals`` (named for the default, the mean)."""
    idx = rng.integers(0, vals.size, size=(resamples, vals.size))
    return _statistic(statistic)(vals[idx], axis=1)


def _bounds(means: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_mean(values: Sequence[float | None], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean of the finite ``values`` with a percentile-bootstrap ``level`` interval."""
    _check(level, resamples)
    vals, missing = finite_values(values)
    if vals.size == 0:
        return Interval(None, None, None, 0, missing, level, "no finite value")
    if vals.size == 1:
        return Interval(float(vals[0]), None, None, 1, missing, level, "n=1: no confidence interval")
    lo, hi = _bounds(_resampled_means(vals, resamples, np.random.default_rng(seed)), level)
    return Interval(float(vals.mean()), lo, hi, int(vals.size), missing, level)


def bootstrap_diff(
    baseline: Sequence[float | None], other: Sequence[float | None], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0,
    statistic: str = "mean",
) -> Interval:
    """``stat(other) - stat(baseline)`` with a percentile-bootstrap interval (the groups resampled independently);
    ``statistic`` is ``"mean"`` or ``"median"`` (a pre-registered median difference, robust to one wild seed).

    ``n`` is the smaller group's number of finite values; ``missing`` counts both groups' missing values.
    """
    _check(level, resamples)
    stat = _statistic(statistic)
    a, miss_a = finite_values(baseline)
    b, miss_b = finite_values(other)
    missing, n = miss_a + miss_b, int(min(a.size, b.size))
    if a.size == 0 or b.size == 0:
        return Interval(None, None, None, 0, missing, level, "a group has no finite value")
    est = float(stat(b) - stat(a))
    if a.size < 2 or b.size < 2:
        return Interval(est, None, None, n, missing, level, "a group has n=1: no confidence interval")
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(b, resamples, rng, statistic) - _resampled_means(a, resamples, rng, statistic)
    lo, hi = _bounds(diffs, level)
    return Interval(est, lo, hi, n, missing, level)
