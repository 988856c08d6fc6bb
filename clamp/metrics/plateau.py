"""A loss plateau at a known level, then a drop: measured by flatness, not by time spent in a band.

Singh et al. 2024's phase change is a loss that sits at ln 2 (picking one of the two context
labels) and then falls abruptly. Counting time within a band around ln 2 cannot tell that from a
slow, steady descent through ln 2, which also spends time in the band. This module measures the
two things the claim is about: how flat the curve is while it sits near the level, and how much
steeper it falls afterwards. A straight line through the level has abruptness 1 and fails; an
exponential decay through it has abruptness < 1 and fails; a flat stretch then a sigmoid drop
passes. The rule is fixed here, before any run, and written out in
``experiments/singh2024/FACTORS.md``.

Definitions (``steps`` and ``loss`` are an eval curve; the loss is smoothed by a running median of
``smooth`` evals first, so one noisy eval decides nothing):

* band: ``[lo * level, hi * level]`` (defaults 0.85 and 1.15 of ``level``);
* ``t_learn``: first eval below ``learned * level`` (default 0.4: the paper's learning speed);
* ``t_leave``: the last eval before ``t_learn`` that is still inside or above the band;
* plateau: the maximal run of consecutive in-band evals ending at ``t_leave``; ``t_enter`` its
  first eval. ``arrived`` says whether the loss came from above the band (a curve that starts in
  the band, like a clamp that fixes the loss at ln 2 at initialisation, did not), read on the raw
  evals up to ``t_enter``, because the running median shrinks at the curve's start and would smooth
  a first eval above the band into it;
* plateau slope ``s_p``: the least-squares descent rate over the plateau (loss per 1,000 steps),
  floored at ``slope_floor`` (a flat or rising plateau gets the floor: the ratio stays finite);
* drop: from ``t_leave`` to ``t_learn``; its rate ``s_d = (loss(t_leave) - loss(t_learn)) /
  (t_learn - t_leave)`` per 1,000 steps;
* abruptness ``A = s_d / s_p``; ``plateau_to_drop = (t_leave - t_enter) / (t_learn - t_leave)``.

``plateau_then_drop`` (the verdict) holds iff the curve learned, arrived, the plateau has at least
``min_plateau_evals`` evals, the plateau lasts at least as long as the drop
(``plateau_to_drop >= 1``) and ``A >= min_abruptness`` (default 5: the drop is at least five
times as steep as the plateau).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

LN2 = math.log(2.0)


@dataclass(frozen=True)
class PlateauRule:
    """Thresholds of the plateau-then-drop rule (fixed before the runs; see the module docstring)."""

    level: float = LN2
    lo: float = 0.85
    hi: float = 1.15
    learned: float = 0.4
    smooth: int = 5
    slope_floor: float = 0.002  # loss per 1,000 steps
    min_plateau_evals: int = 4
    min_plateau_to_drop: float = 1.0
    min_abruptness: float = 5.0


@dataclass(frozen=True)
class Plateau:
    """What :func:`measure_plateau` found on one curve (steps are the curve's own; ``None``: not found)."""

    learned: bool
    t_learn: float | None
    t_enter: float | None
    t_leave: float | None
    arrived: bool
    plateau_steps: float | None
    drop_steps: float | None
    plateau_slope: float | None  # loss per 1,000 steps, descent positive, floored
    drop_slope: float | None
    abruptness: float | None
    plateau_to_drop: float | None
    plateau_then_drop: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def running_median(y: np.ndarray, k: int) -> np.ndarray:
    """Centred running median of odd width ``k`` (shrinking at the ends)."""
    if k <= 1:
        return y.copy()
    h = k // 2
    return np.array([np.median(y[max(0, i - h) : i + h + 1]) for i in range(len(y))])


def _descent_rate(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares descent rate of ``y`` over ``t``, per 1,000 steps (positive when falling)."""
    if len(t) < 2 or np.ptp(t) == 0:
        return 0.0
    tc = t - t.mean()
    return float(-(tc @ (y - y.mean())) / (tc @ tc) * 1000.0)


def measure_plateau(steps: ArrayLike, loss: ArrayLike, rule: PlateauRule = PlateauRule()) -> Plateau:
    """Measure the plateau at ``rule.level`` and the drop after it (see the module docstring)."""
    t = np.asarray(steps, dtype=float)
    y = np.asarray(loss, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    order = np.argsort(t, kind="stable")
    t, raw = t[order], y[order]
    y = running_median(raw, rule.smooth)
    none = dict(t_enter=None, t_leave=None, arrived=False, plateau_steps=None, drop_steps=None,
                plateau_slope=None, drop_slope=None, abruptness=None, plateau_to_drop=None)
    lo, hi, learned_at = rule.lo * rule.level, rule.hi * rule.level, rule.learned * rule.level
    below = np.flatnonzero(y < learned_at)
    if len(t) < 2 or not below.size:
        return Plateau(learned=False, t_learn=None, plateau_then_drop=False, reason="never fell below the learned level", **none)
    i_learn = int(below[0])
    above_lo = np.flatnonzero(y[:i_learn] >= lo)
    if not above_lo.size:
        return Plateau(learned=True, t_learn=float(t[i_learn]), plateau_then_drop=False,
                       reason="the first eval is already below the band", **none)
    i_leave = int(above_lo[-1])
    if y[i_leave] > hi:  # fell from above the band straight through it
        return Plateau(learned=True, t_learn=float(t[i_learn]), plateau_then_drop=False,
                       reason="no eval inside the band before the drop", **none)
    i_enter = i_leave
    while i_enter > 0 and lo <= y[i_enter - 1] <= hi:
        i_enter -= 1
    # arrival is read on the raw evals up to the plateau's first one: the running median shrinks at the
    # curve's start, so a first eval above the band (the loss still falling onto the plateau) would be
    # smoothed into it, and a run whose evals begin late would look as if it started on the plateau
    arrived = bool(raw[: i_enter + 1].max() > hi)
    n_plateau = i_leave - i_enter + 1
    s_p = max(_descent_rate(t[i_enter : i_leave + 1], y[i_enter : i_leave + 1]), rule.slope_floor)
    drop_steps = float(t[i_learn] - t[i_leave])
    s_d = float(y[i_leave] - y[i_learn]) / drop_steps * 1000.0
    plateau_steps = float(t[i_leave] - t[i_enter])
    abrupt = s_d / s_p
    ratio = plateau_steps / drop_steps
    fails = [] if arrived else ["the curve starts in the band (no descent onto a plateau)"]
    if n_plateau < rule.min_plateau_evals:
        fails.append(f"plateau of {n_plateau} evals < {rule.min_plateau_evals}")
    if ratio < rule.min_plateau_to_drop:
        fails.append(f"plateau/drop duration {ratio:.2f} < {rule.min_plateau_to_drop:g}")
    if abrupt < rule.min_abruptness:
        fails.append(f"abruptness {abrupt:.1f} < {rule.min_abruptness:g}")
    return Plateau(
        learned=True, t_learn=float(t[i_learn]), t_enter=float(t[i_enter]), t_leave=float(t[i_leave]), arrived=arrived,
        plateau_steps=plateau_steps, drop_steps=drop_steps, plateau_slope=s_p, drop_slope=s_d, abruptness=abrupt,
        plateau_to_drop=ratio, plateau_then_drop=not fails, reason="; ".join(fails) or "plateau then abrupt drop",
    )
