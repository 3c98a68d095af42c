"""One module per chapter topic; each experiment a plain function registered with
:func:`helpers.experiments.base.experiment`. ``all_experiments()`` imports them all."""
from .base import REGISTRY, Experiment, LiveRun, Result, all_experiments, experiment

__all__ = ["REGISTRY", "Experiment", "LiveRun", "Result", "all_experiments", "experiment"]
