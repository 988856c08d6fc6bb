"""Phase-change detection: find the abrupt rises and drops of a logged training curve.

Method
------
We fit a 4-parameter logistic ("sigmoid")

    y(t) = before + jump * sigmoid((t - mid) / tau)

by least squares, with numpy only (no scipy):

1. Clean: drop non-finite points, sort by step (irregular spacing is fine), normalise steps to
   [0, 1] and values to zero mean / unit std so the numerics do not depend on units.
2. Initialise from the steepest point of a smoothed copy of the curve (resampled on a uniform
   grid, Gaussian-smoothed, finite-difference slope), which also gives a first ``tau``.
3. Grid search over (mid, tau) — uniform ``mid`` plus a dense patch around the slope guess,
   log-spaced ``tau`` — where, for each grid point, ``before`` and ``jump`` enter linearly and are
   solved in closed form (variable projection), so one grid point costs one pass over the data.
4. Refine (mid, log tau) by zooming a small grid in on the best point (same profiled residual).

Before step 2, a curve (or window) whose best *monotone* fit (isotonic regression) explains less
than ``r2 >= 0.8`` of its variance is rejected without fitting: a sigmoid is monotone, so it cannot
pass the ``r2`` test below either (exact, and most windows of a curve without a transition end there).

``onset``/``end`` are where the fitted sigmoid crosses 10 % / 90 % of the jump
(``mid -/+ tau * ln 9``); ``midpoint`` is ``mid``; ``width = end - onset``.

Why a sigmoid fit rather than thresholding a smoothed derivative: it uses every point, so it is
robust to noise without a smoothing scale to tune, it gives onset, midpoint and end from one
consistent model (and plateau levels for free), and its residual gives a noise estimate for the
significance test below.

A fit is reported only if it is a *phase change*, otherwise ``None`` is returned:

* both plateaus are observed: at least ``max(3, 2 % of the points)`` lie before ``onset`` and after
  ``end`` (this is a constraint of the search, so a transition still under way at the last step,
  or an initial transient already under way at the first, is not reported);
* ``|jump|`` exceeds ``min_jump``. By default that is the largest of

  - ``3 x`` the residual std of the fit and ``0.2 x`` the robust range (99th - 1st percentile) of
    the fitted points (so small wiggles on a large transition are not reported);
  - ``3 x`` the point-to-point noise of the *whole* curve (robust: the median absolute deviation
    of successive differences, / sqrt 2), so a window fitted on a quiet stretch cannot call a
    noise-sized step a phase change;
  - ``5 %`` of the curve's *scale*: the range of the quantity when it is known (``scale=1`` for
    accuracies and attention fractions; :func:`phase_change_of` knows clamp's tags), else the
    curve's largest magnitude ``max |y|``. A chance-level accuracy (1/32 +- 0.005) therefore
    never shows a phase change, however good the fit looks on its own scale;
* the fit explains the points: ``r2 >= 0.8`` on the fitted window;
* it is sharp: the sigmoid must beat a straight line by at least ``0.4 % * jump**2`` of residual
  variance. For a centred transition this means ``width`` below about 0.55 x the observed span.
  A slow linear ramp over the whole range therefore returns ``None`` (it is a trend, not a
  phase change); crop the curve to the window of interest if a wide transition matters.

Limits: :func:`detect_phase_change` finds one transition per call (the one that best fits a single
sigmoid), and which one can depend on where the curve ends. :func:`detect_phase_changes` (and
:func:`phase_changes_of`, what summary.json and TensorBoard use) finds every one with a causal scan,
so that extending a curve never erases or moves a transition it had found. When the whole curve fails the tests above (typically a loss curve
whose initial transient runs into the phase change, leaving no flat plateau before it), the fit is
retried on a grid of windows of the curve (each at least 20 % of the span), and the largest
significant jump is reported; its ``method`` names the window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Direction = Literal["auto", "rise", "drop"]
ArrayLike = Sequence[float] | np.ndarray

METHOD = "logistic-lsq"
LN9 = math.log(9.0)
MIN_POINTS = 8
MIN_JUMP_FRAC = 0.05  # default |jump| >= MIN_JUMP_FRAC * the curve's scale ...
R2_MIN = 0.8  # ... and the fit must explain this much of the window's variance
SUPPORT_FRAC = 0.02  # fraction of points required on each plateau
NOISE_K = 3.0  # default |jump| >= NOISE_K * residual std ...
RANGE_FRAC = 0.2  # ... and >= RANGE_FRAC * robust range
SHARPNESS = 0.004  # (line residual var - sigmoid residual var) / jump**2 must exceed this
GRID_POINTS = 400  # the grid search runs on at most this many points; refinement uses all


@dataclass(frozen=True)
class PhaseChange:
    """One detected transition, in the units of the input (steps and values)."""

    onset: float
    midpoint: float
    end: float
    before: float
    after: float
    jump: float
    width: float
    direction: str
    r2: float
    method: str = METHOD

    def to_dict(self) -> dict[str, float | str]:
        """Plain dict (JSON-serialisable) for reports and summaries."""
        return asdict(self)


def _clean(steps: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Finite, step-sorted float arrays (NaNs/infs dropped pairwise)."""
    t = np.asarray(steps, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if t.shape != y.shape:
        raise ValueError(f"steps and values differ in length: {t.size} vs {y.size}")
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    order = np.argsort(t, kind="stable")
    return t[order], y[order]


def _profile(
    t: np.ndarray, y: np.ndarray, mids: np.ndarray, taus: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual sum of squares, ``before`` and ``jump`` for each (mid, tau), solved in closed form.

    For fixed (mid, tau) the model is linear in (before, jump): 2x2 normal equations.
    """
    s = t[None, :] - mids[:, None]  # the overflow-free logistic 0.5 (1 + tanh(z / 2)), in place
    s /= taus[:, None]
    s *= 0.5
    np.tanh(s, out=s)
    s += 1.0
    s *= 0.5
    n = float(t.size)
    ss, sss, sy = s.sum(1), np.einsum("ij,ij->i", s, s), s @ y
    sumy, yy = y.sum(), y @ y
    det = n * sss - ss**2
    ok = det > 1e-9 * n * n
    det = np.where(ok, det, 1.0)
    jump = (n * sy - ss * sumy) / det
    before = (sumy - jump * ss) / n
    rss = np.maximum(yy - before * sumy - jump * sy, 0.0)
    return np.where(ok, rss, np.inf), before, jump


class _Problem:
    """Constrained, profiled least-squares problem on normalised data."""

    def __init__(self, t: np.ndarray, y: np.ndarray, direction: Direction, tau_lo: float, tau_hi: float):
        self.t, self.y, self.direction = t, y, direction
        self.tau_lo, self.tau_hi = tau_lo, tau_hi
        self.support = max(3, math.ceil(SUPPORT_FRAC * t.size))

    def rss(self, mids: np.ndarray, taus: np.ndarray, t: np.ndarray | None = None, y: np.ndarray | None = None) -> np.ndarray:
        """Profiled RSS, +inf where constraints (plateau support, sign, tau bounds) fail."""
        t = self.t if t is None else t
        y = self.y if y is None else y
        onset, end = mids - taus * LN9, mids + taus * LN9
        n_before = np.searchsorted(self.t, onset, side="left")
        n_after = self.t.size - np.searchsorted(self.t, end, side="right")
        ok = (n_before >= self.support) & (n_after >= self.support)
        ok &= (taus >= self.tau_lo * 0.999) & (taus <= self.tau_hi * 1.001)
        out = np.full(mids.shape, np.inf)
        if not ok.any():
            return out
        rss, _, jump = _profile(t, y, mids[ok], taus[ok])  # only where the data constraints hold
        if self.direction == "rise":
            rss = np.where(jump > 0, rss, np.inf)
        elif self.direction == "drop":
            rss = np.where(jump < 0, rss, np.inf)
        out[ok] = rss
        return out

    def pinned(self, mid: float, tau: float, tol: float = 1e-3) -> bool:
        """Whether a plateau constraint is active, i.e. the best fit wants the transition to
        start before the first (or end after the last) observed points: no real plateau there."""
        onset, end, k = mid - tau * LN9, mid + tau * LN9, self.support
        n_before = int(np.searchsorted(self.t, onset, side="left"))
        n_after = self.t.size - int(np.searchsorted(self.t, end, side="right"))
        return (n_before == k and onset - self.t[k - 1] < tol) or (n_after == k and self.t[-k] - end < tol)


def _slope_guess(t: np.ndarray, y: np.ndarray, direction: Direction) -> tuple[float, float]:
    """(mid, tau) from the steepest point of a smoothed, uniformly resampled curve."""
    g = int(min(max(t.size, 64), 512))
    tu = np.linspace(0.0, 1.0, g)
    yu = np.interp(tu, t, y)
    sigma = max(1.0, 0.01 * g)
    half = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    ys = np.convolve(np.pad(yu, half, mode="edge"), k / k.sum(), mode="valid")
    slope = np.gradient(ys, tu)
    inner = slice(half, g - half) if g > 2 * half + 2 else slice(None)
    sl = slope[inner]
    if direction == "rise":
        i = int(np.argmax(sl))
    elif direction == "drop":
        i = int(np.argmin(sl))
    else:
        i = int(np.argmax(np.abs(sl)))
    mid = float(tu[inner][i])
    amp = float(ys.max() - ys.min())
    tau = amp / (4.0 * abs(float(sl[i]))) if sl[i] != 0 else 0.1
    return mid, tau


def _refine(prob: "_Problem", x0: np.ndarray, half: np.ndarray, levels: int = 9, k: int = 5) -> np.ndarray:
    """Zoom in on the best (mid, log tau) around ``x0``: a ``k x k`` grid of half-widths ``half``,
    re-centred on its best point and shrunk to one grid step per level (2x for k = 5: down to
    ~2e-3 x ``half`` after 9 levels).

    Every level is one vectorised call of the profiled RSS, so it costs a few milliseconds where a
    sequential simplex search paid Python overhead on each of its ~170 evaluations (the end-of-run
    summary fits ~150 curves, most of them twice over a dozen windows).
    """
    x, best = x0.copy(), float(prob.rss(np.array([x0[0]]), np.array([math.exp(x0[1])]))[0])
    offsets = np.linspace(-1.0, 1.0, k)
    off_mid, off_tau = np.repeat(offsets, k), np.tile(offsets, k)  # the k x k grid, mid-major
    for _ in range(levels):
        mg, lg = x[0] + half[0] * off_mid, x[1] + half[1] * off_tau
        rss = prob.rss(mg, np.exp(lg))
        i = int(np.argmin(rss))
        if rss[i] < best:
            x, best = np.array([mg[i], lg[i]]), float(rss[i])
        half = half * (2.0 / (k - 1))
    return x


def _fit(t: np.ndarray, y: np.ndarray, direction: Direction) -> tuple[float, float, float, float, float] | None:
    """Best constrained (mid, tau, before, jump, rss) on normalised data.

    None if no feasible fit exists or the best one is pinned against a plateau constraint.
    """
    dt = np.diff(t)
    dt = dt[dt > 0]
    tau_lo = max(float(np.median(dt)) if dt.size else 1e-3, 1e-6) / 10.0
    tau_hi = 1.0 / (2.0 * LN9)  # width <= observed span
    prob = _Problem(t, y, direction, tau_lo, tau_hi)

    # Grid search on a subsample (constraints still counted on the full data).
    idx = np.unique(np.linspace(0, t.size - 1, min(t.size, GRID_POINTS)).round().astype(int))
    ts, ys = t[idx], y[idx]
    mid0, tau0 = _slope_guess(t, y, direction)
    tau0 = float(np.clip(tau0, tau_lo, tau_hi))
    mids = np.unique(np.concatenate([np.linspace(0, 1, 101), mid0 + np.linspace(-0.05, 0.05, 21)]))
    mids = mids[(mids >= 0) & (mids <= 1)]
    taus = np.unique(np.concatenate([np.geomspace(tau_lo, tau_hi, 24), [tau0]]))
    mg, tg = (a.ravel() for a in np.meshgrid(mids, taus, indexing="ij"))
    rss = np.concatenate([prob.rss(mg[i : i + 2048], tg[i : i + 2048], ts, ys) for i in range(0, mg.size, 2048)])
    if not np.isfinite(rss).any():
        return None
    best = int(np.argmin(rss))
    x0 = np.array([mg[best], math.log(tg[best])])

    mid_step = max(float(np.diff(mids).mean()), 2 * math.exp(x0[1]))
    x = _refine(prob, x0, np.array([mid_step, 0.3]))  # stays feasible: it only moves to a better finite RSS
    mid, tau = float(x[0]), math.exp(float(x[1]))
    if prob.pinned(mid, tau):
        return None
    rss_v, before, jump = _profile(t, y, np.array([mid]), np.array([tau]))
    return mid, tau, float(before[0]), float(jump[0]), float(rss_v[0])


def _monotone_rss(y: np.ndarray, direction: Direction) -> float:
    """Residual sum of squares of the best monotone fit (isotonic regression, pool-adjacent-violators)
    in the allowed direction(s).

    A fitted sigmoid is monotone in the step, so no sigmoid fits better than this: a window whose
    best monotone fit already explains less than ``R2_MIN`` of its variance cannot hold a phase
    change, and is rejected exactly, without the grid search (most windows of a curve with no
    transition, e.g. a head that never specialises).
    """
    best = math.inf
    for sign in ((1.0,) if direction == "rise" else (-1.0,) if direction == "drop" else (1.0, -1.0)):
        sums: list[float] = []
        counts: list[int] = []
        for v in (sign * y).tolist():
            s, c = v, 1
            while sums and sums[-1] * c >= s * counts[-1]:  # previous block's mean >= this one's: pool
                s, c = s + sums.pop(), c + counts.pop()
            sums.append(s)
            counts.append(c)
        fitted = sum(s * s / c for s, c in zip(sums, counts))
        best = min(best, float(y @ y) - fitted)
    return max(best, 0.0)


def _line_rss(t: np.ndarray, y: np.ndarray) -> float:
    """Residual sum of squares of the best straight line (the 'gradual trend' alternative)."""
    if not (np.isfinite(t).all() and np.isfinite(y).all()):  # LAPACK never sees non-finite input
        return float("nan")
    a = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = y - a @ coef
    return float(r @ r)


WINDOW_STARTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)  # window bounds (fractions of the span) tried when
WINDOW_ENDS = (1.0, 0.6, 0.4, 0.25)  # the whole-curve fit fails
MIN_WINDOW = 0.2  # smallest window, as a fraction of the span


def detect_phase_change(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    direction: Direction = "auto",
    min_jump: float | None = None,
    scale: float | None = None,
) -> PhaseChange | None:
    """Fit one logistic transition to ``values(steps)``; ``None`` if there is no significant, sharp one.

    ``direction`` restricts the search to rises or drops (``'auto'``: whichever fits best).
    ``min_jump`` is an absolute threshold on ``|after - before|`` in value units, replacing the
    default rule; ``scale`` is the range of the quantity (e.g. 1 for an accuracy) for the default
    rule (see the module docstring).

    If the whole curve holds no single clean transition (typically a loss curve whose initial
    transient runs into the phase change and whose slow decline follows it), the fit is repeated
    on windows of the curve (``WINDOW_STARTS`` x ``WINDOW_ENDS``, at least ``MIN_WINDOW`` of the
    span) and the significant transition with the largest jump is returned.
    """
    t, y = _checked(steps, values, direction, scale)
    return _search(t, y, direction, min_jump, _floor(y, scale, min_jump))[0]


def _checked(steps: ArrayLike, values: ArrayLike, direction: Direction, scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The public detectors' argument checks, then the cleaned, sorted points."""
    if direction not in ("auto", "rise", "drop"):
        raise ValueError(f"direction must be 'auto', 'rise' or 'drop', got {direction!r}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0 (the range of the quantity), got {scale}")
    return _clean(steps, values)


def _floor(y: np.ndarray, scale: float | None, min_jump: float | None) -> float:
    """The default rule's floor on ``|jump|`` from the points ``y`` (none when ``min_jump`` replaces the rule)."""
    return _jump_floor(y, scale) if min_jump is None and y.size else 0.0


def _in_window(pc: PhaseChange, first: float, last: float) -> PhaseChange:
    """``pc`` with its ``method`` naming the window of steps ``first``-``last`` it was fitted on."""
    return PhaseChange(**{**pc.to_dict(), "method": f"{METHOD} (window {first:g}-{last:g})"})


def _search(t: np.ndarray, y: np.ndarray, direction: Direction, min_jump: float | None, floor: float) -> tuple[PhaseChange | None, int]:
    """The one search both public detectors run: the whole-span fit, else the largest significant
    jump over windows of the span; with the index of the first point of the window it was found on."""
    found = _detect(t, y, direction, min_jump, floor)
    if found is not None or t.size < 2 * MIN_POINTS:
        return found, 0
    candidates = []
    t0, span = t[0], t[-1] - t[0]
    for a in WINDOW_STARTS:
        for b in WINDOW_ENDS:
            if b - a < MIN_WINDOW or (a, b) == (0.0, 1.0):
                continue
            keep = (t >= t0 + a * span) & (t <= t0 + b * span)
            if keep.sum() < MIN_POINTS:
                continue
            pc = _detect(t[keep], y[keep], direction, min_jump, floor)
            if pc is not None:
                candidates.append((_in_window(pc, t[keep][0], t[keep][-1]), int(np.argmax(keep))))
    return max(candidates, key=lambda c: abs(c[0].jump), default=(None, 0))


SCAN_STRIDE = 8  # the causal scan checks again after every max(1, n / SCAN_STRIDE) new points of a search ...
TRACK_STRIDE = 8  # ... and, while a found transition settles, after every max(1, n / TRACK_STRIDE) new points


def detect_phase_changes(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    direction: Direction = "auto",
    min_jump: float | None = None,
    scale: float | None = None,
) -> list[PhaseChange]:
    """Every settled phase change of a curve, in time order, found by a causal scan: extending the
    curve (a resumed run) keeps every one found before, unmoved.

    The scan reads the curve as training writes it. At check points ``end`` (after every
    ``max(1, n // SCAN_STRIDE)`` new points, ``n`` the points searched so far) it runs
    :func:`detect_phase_change` on the points ``[origin, end)``, with the noise and scale floor of
    the points up to ``end`` only. A transition found there is frozen once it has *settled*: the
    curve has gone on past its ``end`` for at least its ``width`` and ``MIN_POINTS // 2`` points;
    the search then starts again from that ``end``. Every check reads only points before it, so the
    result for a prefix of a curve is a prefix of the result for the whole curve; a transition still
    settling at the last point is not reported yet. The plateau-support constraint keeps every
    midpoint at least ``max(3, 2 %)`` points inside its window, so no fit sits on a window's edge.
    """
    t, y = _checked(steps, values, direction, scale)
    found: list[PhaseChange] = []
    origin, end, track = 0, MIN_POINTS, None  # track: start of the window holding a transition still settling
    while end <= t.size:
        floor = _floor(y[:end], scale, min_jump)  # from the points written so far only
        pc = _detect(t[track:end], y[track:end], direction, min_jump, floor) if track is not None else None
        if pc is None:  # no transition being tracked (or it faded as the window grew): search the whole segment
            pc, lo = _search(t[origin:end], y[origin:end], direction, min_jump, floor)
            if pc is None:
                track, end = None, end + max(1, (end - origin) // SCAN_STRIDE)
                continue
            track = origin + lo
        pc = _in_window(pc, t[track], t[end - 1])
        settled = t[end - 1] - pc.end >= pc.width and int(np.sum(t[:end] > pc.end)) >= MIN_POINTS // 2
        if not (settled and _flat_plateaus(t[track:end], y[track:end], pc)):
            end += max(1, (end - track) // TRACK_STRIDE)  # follow it until its after-plateau is as long as the transition
            continue
        found.append(pc)
        origin, track = int(np.searchsorted(t, pc.end, side="left")), None
        end = max(end, origin + MIN_POINTS)
    return found


PLATEAU_DRIFT = 0.5  # a plateau may drift by at most this fraction of the jump over one transition width


def _drift(t: np.ndarray, y: np.ndarray) -> float:
    """How far a least-squares line through the points moves over their span (0 for fewer than 3)."""
    if t.size < 3 or t[-1] <= t[0]:
        return 0.0
    dt = t - t.mean()
    return abs(float(dt @ (y - y.mean())) / float(dt @ dt)) * float(t[-1] - t[0])


def _flat_plateaus(t: np.ndarray, y: np.ndarray, pc: PhaseChange) -> bool:
    """Whether the curve is level for one ``width`` before ``onset`` and after ``end``: a transition
    between plateaus, not a bend of a steady trend (which short windows otherwise cut into steps)."""
    w = max(pc.width, 0.0)
    before = (t >= pc.onset - w) & (t <= pc.onset)
    after = (t >= pc.end) & (t <= pc.end + w)
    limit = PLATEAU_DRIFT * abs(pc.jump)
    return _drift(t[before], y[before]) <= limit and _drift(t[after], y[after]) <= limit


def _jump_floor(y: np.ndarray, scale: float | None) -> float:
    """Smallest default ``|jump|`` from the whole curve: its point-to-point noise and its scale."""
    d = np.diff(y)
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0) if d.size else 0.0
    size = scale if scale is not None else float(np.max(np.abs(y)))
    return max(NOISE_K * noise, MIN_JUMP_FRAC * size)


def _detect(t: np.ndarray, y: np.ndarray, direction: Direction, min_jump: float | None, floor: float = 0.0) -> PhaseChange | None:
    """The single-window fit and significance tests on cleaned, sorted points."""
    if t.size < MIN_POINTS or t[-1] <= t[0]:
        return None
    y_mean, y_std = float(y.mean()), float(y.std())
    if not y_std > 0:
        return None
    t0, span = float(t[0]), float(t[-1] - t[0])
    tn, yn = (t - t0) / span, (y - y_mean) / y_std
    tss = float(yn @ yn)
    if 1.0 - _monotone_rss(yn, direction) / tss < R2_MIN - 1e-9:  # no sigmoid can pass the r2 test below
        return None

    fit = _fit(tn, yn, direction)
    if fit is None:
        return None
    mid, tau, before, jump, rss = fit
    n = tn.size
    resid_std = math.sqrt(rss / max(n - 4, 1))
    if min_jump is None:
        lo, hi = np.percentile(yn, [1, 99])
        threshold = max(NOISE_K * resid_std, RANGE_FRAC * float(hi - lo), floor / y_std)
    else:
        threshold = float(min_jump) / y_std
    if abs(jump) < threshold or abs(jump) == 0:
        return None
    if (_line_rss(tn, yn) - rss) / n < SHARPNESS * jump**2:
        return None
    if tss <= 0 or 1.0 - rss / tss < R2_MIN:
        return None

    # Back to input units.
    mid_s, tau_s = t0 + mid * span, tau * span
    before_v, jump_v = y_mean + before * y_std, jump * y_std
    return PhaseChange(
        onset=mid_s - tau_s * LN9,
        midpoint=mid_s,
        end=mid_s + tau_s * LN9,
        before=before_v,
        after=before_v + jump_v,
        jump=jump_v,
        width=2.0 * tau_s * LN9,
        direction="rise" if jump_v > 0 else "drop",
        r2=1.0 - rss / tss if tss > 0 else float("nan"),
    )


def detect_all(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    direction: Direction = "auto",
    min_jump: float | None = None,
) -> dict[str, PhaseChange | None]:
    """:func:`detect_phase_change` on each named ``(steps, values)`` curve."""
    return {
        name: detect_phase_change(s, v, direction=direction, min_jump=min_jump) for name, (s, v) in curves.items()
    }


#: Tags whose quantity lies in [0, 1] (accuracies, attention fractions, probabilities): scale 1.
UNIT_RANGE_TAGS = (
    "*/acc", "*/acc/*",
    "*/prev_token/*", "*/induction/*", "*/prefix_matching/*", "*/retrieval/*", "*/teacher_forced_copy/*", "*/attn_sink/*", "*/attn_sink",
    "*/label_to_exemplar/*", "*/query_to_match/*", "*/query_to_exemplar/*",
)  # fmt: skip


def curve_scale(tag: str) -> float | None:
    """The range of the quantity a logged tag holds: 1 for the tags in :data:`UNIT_RANGE_TAGS`, else unknown."""
    return 1.0 if any(fnmatchcase(tag, p) for p in UNIT_RANGE_TAGS) else None


def phase_changes_of(tag: str, steps: ArrayLike, values: ArrayLike) -> list[PhaseChange]:
    """Every phase change of the logged curve ``tag``, in time order (:func:`detect_phase_changes`):
    the one definition summary.json, TensorBoard and reports use."""
    return detect_phase_changes(steps, values, scale=curve_scale(tag))


def phase_change_of(tag: str, steps: ArrayLike, values: ArrayLike) -> PhaseChange | None:
    """The main phase change of the logged curve ``tag``: the largest jump of :func:`phase_changes_of`
    (None if it has none). A longer run keeps every one found; it can only make a larger, later one the main."""
    return main_phase_change(phase_changes_of(tag, steps, values))


def main_phase_change(found: Sequence[PhaseChange]) -> PhaseChange | None:
    """The largest jump of a curve's phase changes (the earliest of equals); None for none."""
    return max(found, key=lambda pc: abs(pc.jump), default=None)
