"""When an intervention is on, and how strongly: ``alpha(step) in [0, 1]`` per optimizer step.

One :class:`Schedule` covers every shape a clamp study needs: a step window with linear ramps in
and out, a list of such windows, periodic on/off gating, and "until a logged metric crosses a
threshold" release. The release step is part of the callback's checkpointed state, so a resumed
run follows the same schedule as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MAX_OVERLAP_SCAN = 1_000_000  # steps scanned to decide whether two periodic gates ever coincide


@dataclass
class Window:
    """Active on ``[start, stop)`` (``stop=None``: open-ended) with linear ramps inside the window."""

    start: int = 0
    stop: int | None = None
    ramp: int = 0  # steps to ramp alpha 0 -> 1 from ``start``
    ramp_out: int = 0  # steps to ramp alpha 1 -> 0 ending at ``stop``

    def validate(self, where: str) -> None:
        if self.start < 0 or self.ramp < 0 or self.ramp_out < 0:
            raise ValueError(f"{where}: start, ramp and ramp_out must be >= 0, got {self}")
        if self.ramp_out and self.stop is None:
            raise ValueError(f"{where}: ramp_out={self.ramp_out} needs a `stop` to ramp out to (or use until.ramp_out)")
        if self.stop is not None and self.stop < self.start + self.ramp + self.ramp_out:
            raise ValueError(f"{where}: stop={self.stop} must be >= start + ramp + ramp_out = {self.start + self.ramp + self.ramp_out}")
        if self.stop is not None and self.stop == self.start:
            raise ValueError(f"{where}: start={self.start} == stop={self.stop} is an empty window (active on [start, stop)); "
                             "give stop > start, or stop: null for open-ended")

    def alpha(self, step: int) -> float:
        if step < self.start or (self.stop is not None and step >= self.stop):
            return 0.0
        a = 1.0
        if self.ramp:
            a = min(a, (step - self.start + 1) / self.ramp)
        if self.ramp_out and self.stop is not None:
            a = min(a, (self.stop - step) / self.ramp_out)  # mirror of the ramp in: 1 at stop - ramp_out, 1/ramp_out at stop - 1
        return a


@dataclass
class MetricCondition:
    """Release the intervention once ``metric`` (a logged scalar, e.g. ``val/ic/acc``) crosses ``threshold``."""

    metric: str
    threshold: float
    mode: Literal["above", "below"] = "above"
    ramp_out: int = 0  # steps to fade out after the release

    def validate(self, where: str = "until") -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ValueError(f"{where}.metric={self.metric!r}: give the name of a logged scalar, e.g. 'val/ic/acc'")
        if self.mode not in ("above", "below"):
            raise ValueError(f"{where}.mode={self.mode!r}; valid: 'above', 'below'")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise ValueError(f"{where}.threshold={self.threshold!r}: must be a finite number")
        if self.ramp_out < 0:
            raise ValueError(f"{where}.ramp_out={self.ramp_out}: must be >= 0")

    def crossed(self, value: float, step: int | None = None) -> bool:
        """Whether ``value`` of the metric crosses the threshold; a non-finite value is an error: NaN
        crosses no threshold, so the clamp would silently never release while the run ends complete."""
        if not math.isfinite(value):
            at = "" if step is None else f" at step {step}"
            raise ValueError(
                f"until.metric={self.metric!r} is {value}{at}, so the `until` condition (mode {self.mode!r}, threshold {self.threshold}) "
                "can never be decided; the run or the metric's source diverged: fix it, or release on another metric"
            )
        return value > self.threshold if self.mode == "above" else value < self.threshold


@dataclass
class Schedule:
    """Strength of an intervention over training.

    ``alpha = strength * window(step) * periodic(step) * until(step)`` where ``window`` is the
    single ``start/stop/ramp/ramp_out`` window, or the max over ``windows`` if given; ``periodic``
    is on for the first ``on`` steps of every ``period`` (counted from the window start); ``until``
    is 1 until ``until.metric`` crosses its threshold and then fades to 0 over ``until.ramp_out``.
    """

    start: int = 0
    stop: int | None = None
    ramp: int = 0
    ramp_out: int = 0
    windows: list[Window] | None = None
    period: int | None = None
    on: int | None = None
    until: MetricCondition | None = None
    strength: float = 1.0

    def validate(self, where: str = "schedule") -> None:
        if self.windows is not None:
            if (self.start, self.stop, self.ramp, self.ramp_out) != (0, None, 0, 0):
                raise ValueError(f"{where}: give either `windows` or start/stop/ramp/ramp_out, not both")
            if not self.windows:
                raise ValueError(f"{where}: `windows` is empty")
        for i, w in enumerate(self._windows()):
            w.validate(f"{where}.windows[{i}]" if self.windows else where)
        if (self.period is None) != (self.on is None):
            raise ValueError(f"{where}: periodic gating needs both `period` and `on`, got period={self.period}, on={self.on}")
        if self.period is not None and not 0 < self.on <= self.period:  # type: ignore[operator]
            raise ValueError(f"{where}: need 0 < on <= period, got on={self.on}, period={self.period}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"{where}: strength={self.strength} must be in [0, 1]")
        if self.until is not None:
            self.until.validate(f"{where}.until")

    def _windows(self) -> list[Window]:
        return self.windows if self.windows is not None else [Window(self.start, self.stop, self.ramp, self.ramp_out)]

    def alpha(self, step: int, released_at: int | None = None) -> float:
        """Alpha at optimizer step ``step``; ``released_at`` is when the ``until`` condition fired."""
        a = max(w.alpha(step) for w in self._windows())
        if a and self.period is not None:
            origin = min(w.start for w in self._windows())
            if (step - origin) % self.period >= self.on:  # type: ignore[operator]
                a = 0.0
        if a and released_at is not None and self.until is not None:
            if step >= released_at + self.until.ramp_out:
                a = 0.0
            elif self.until.ramp_out:
                a *= min(1.0, (released_at + self.until.ramp_out - step) / self.until.ramp_out)
        return a * self.strength

    def gate(self, step: int) -> bool:
        """Whether the periodic gate is open at ``step`` (always, without ``period``)."""
        if self.period is None:
            return True
        origin = min(w.start for w in self._windows())
        return (step - origin) % self.period < self.on  # type: ignore[operator]

    def overlaps(self, other: Schedule) -> bool:
        """Whether both schedules can be active at the same step (windows and periodic gates; an
        ``until`` release only shortens a schedule, so it is ignored). Alternating windows and
        complementary ``period``/``on`` gates do not overlap."""
        if self.strength == 0 or other.strength == 0:
            return False
        span = math.lcm(self.period or 1, other.period or 1)
        for a in self._windows():
            for b in other._windows():
                lo = max(a.start, b.start)
                hi = min(math.inf if a.stop is None else a.stop, math.inf if b.stop is None else b.stop)
                if lo >= hi:
                    continue
                if span > MAX_OVERLAP_SCAN:
                    return True  # too long to scan: assume they meet
                if any(self.gate(t) and other.gate(t) for t in range(lo, int(min(hi, lo + span)))):
                    return True
        return False

    def bounds(self) -> tuple[int, float]:
        """The widest step range in which alpha can be non-zero (``inf`` for open-ended)."""
        ws = self._windows()
        stops = [float("inf") if w.stop is None else float(w.stop) for w in ws]
        return min(w.start for w in ws), max(stops)

