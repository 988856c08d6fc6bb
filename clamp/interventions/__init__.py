"""Interventions: site selector + operation + schedule, applied on every forward throughout training."""

from clamp.interventions.callback import ClampCallback
from clamp.interventions.engine import Intervention, InterventionEngine, intervene
from clamp.interventions.ops import OPS, Op, OpContext, make_op
from clamp.interventions.schedules import MetricCondition, Schedule, Window

__all__ = [
    "OPS",
    "ClampCallback",
    "Intervention",
    "InterventionEngine",
    "MetricCondition",
    "Op",
    "OpContext",
    "Schedule",
    "Window",
    "intervene",
    "make_op",
]
