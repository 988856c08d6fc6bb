"""Emergence metrics: per-head scores, model-level curves, phase-change detection, and the callback that logs them."""

from clamp.metrics.callback import EmergenceCallback
from clamp.metrics.phase import PhaseChange, detect_all, detect_phase_change

__all__ = ["EmergenceCallback", "PhaseChange", "detect_all", "detect_phase_change"]
