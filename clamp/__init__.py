"""clamp: training-time interventions on transformers ("artificial optogenetics")."""

from clamp.interventions import ClampCallback, Intervention, MetricCondition, Schedule, Window, intervene
from clamp.metrics import EmergenceCallback
from clamp.runs import Run, load_run
from clamp.training import OptimizerConfig, TrainingModule

__all__ = ["ClampCallback", "EmergenceCallback", "Intervention", "MetricCondition", "OptimizerConfig", "Run", "Schedule", "TrainingModule", "Window", "intervene", "load_run"]
