"""Evaluation: metrics, calibration, lesion-level bootstrap and figures.

``plots`` is not imported here (matplotlib); use ``from derm_exp.evaluation import plots``.
"""

from derm_exp.evaluation.bootstrap import bootstrap_ci, standard_metric_fns
from derm_exp.evaluation.calibration import (
    EvaluationInputError,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from derm_exp.evaluation.metrics import classification_metrics, scalar_metrics

__all__ = [
    "EvaluationInputError",
    "apply_temperature",
    "bootstrap_ci",
    "classification_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_curve",
    "scalar_metrics",
    "standard_metric_fns",
]
