"""Selective prediction: how the error falls when the model may abstain on its least sure cases.

The confidence of a prediction is its largest (calibrated, when calibrated probabilities are
given) class probability. Accepting the predictions whose confidence is at least ``t`` gives a
*coverage* (the share accepted) and a *risk* (the error rate among the accepted); sweeping ``t``
from high to low traces the risk-coverage curve (Geifman & El-Yaniv 2017).

* ``aurc``: the area under that curve, the mean over samples ``i`` (sorted by confidence) of the
  risk of the ``i`` most confident ones. Lower is better; a model whose confidence ranks its
  errors last scores the minimum for its error rate, a constant confidence scores the error rate.
* ``eaurc``: ``aurc`` minus that minimum, ``r + (1 - r) ln(1 - r)`` for error rate ``r``
  (Geifman et al. 2019): what is left once the error rate itself is taken out.
* ``at_coverage``: at each target coverage (e.g. 0.9, 0.8) the most confident share accepted,
  and the balanced accuracy, accuracy and risk on those.

Equal confidences are never split: a threshold accepts all of a tie or none, so the curve has
one point per distinct confidence and a constant model's AURC equals its error rate.

:func:`fit_threshold` chooses the abstention threshold for a target coverage or risk. It takes
only the arrays it fits on (the validation split's confidences and correctness): it cannot see
test labels. :func:`apply_threshold` reports what a fitted threshold gives on other data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from derm_exp.evaluation.calibration import EvaluationInputError, validate_probs

DEFAULT_COVERAGES = (0.9, 0.8)
CURVE_POINTS = 201  # points of the curve kept in JSON reports


def coverage_key(coverage: float) -> str:
    """The name suffix of a coverage in metric names: 0.9 -> ``cov90`` (MLflow refuses '@')."""
    return f"cov{round(100 * float(coverage)):02d}"


def _sorted(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-confidence, kind="stable")
    return confidence[order], correct[order]


def _tie_ends(conf_sorted: np.ndarray) -> np.ndarray:
    """Index (in the sorted order) of the last sample of each run of equal confidences."""
    last = np.flatnonzero(np.diff(conf_sorted) != 0)
    return np.append(last, len(conf_sorted) - 1)


def risk_coverage_curve(confidence: Any, correct: Any) -> dict[str, np.ndarray]:
    """``coverage``, ``risk`` and ``threshold`` (accept confidence >= threshold), one point per
    distinct confidence, from the most confident (lowest coverage) to all accepted."""
    conf, ok = _check(confidence, correct)
    conf_s, ok_s = _sorted(conf, ok)
    ends = _tie_ends(conf_s)
    accepted = ends + 1
    errors = np.cumsum(~ok_s)[ends]
    return {
        "coverage": accepted / len(conf),
        "risk": errors / accepted,
        "threshold": conf_s[ends],
    }


def aurc(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage curve (see the module docstring)."""
    conf, ok = _check(confidence, correct)
    conf_s, ok_s = _sorted(conf, ok)
    ends = _tie_ends(conf_s)
    risk_at_end = np.cumsum(~ok_s)[ends] / (ends + 1)
    # every sample of a tie takes the risk at the end of its tie (a threshold accepts all of it)
    sizes = np.diff(np.append(-1, ends))
    return float(np.repeat(risk_at_end, sizes).mean())


def optimal_aurc(error_rate: float) -> float:
    """The smallest AURC a model with this error rate can have (errors ranked last)."""
    r = float(error_rate)
    if r <= 0.0:
        return 0.0
    if r >= 1.0:
        return 1.0
    return r + (1.0 - r) * math.log(1.0 - r)


def accept_top(confidence: np.ndarray, coverage: float) -> np.ndarray:
    """Mask of the ``ceil(coverage * N)`` most confident samples, ties at the cut included."""
    conf = np.asarray(confidence, dtype=np.float64)
    k = max(1, math.ceil(float(coverage) * len(conf) - 1e-9))
    cut = np.sort(conf)[::-1][k - 1]
    return conf >= cut


def _subset_scores(y: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if n == 0:
        return {"coverage": 0.0, "n_accepted": 0, "risk": None, "accuracy": None,
                "balanced_accuracy": None}  # fmt: skip
    with warnings.catch_warnings():  # a class absent among the accepted predictions
        warnings.simplefilter("ignore")
        bacc = float(balanced_accuracy_score(y[mask], pred[mask]))
    accuracy = float((y[mask] == pred[mask]).mean())
    return {
        "coverage": n / len(y),
        "n_accepted": n,
        "risk": 1.0 - accuracy,
        "accuracy": accuracy,
        "balanced_accuracy": bacc,
    }


def selective_metrics(
    y_true: Any, probs: Any, coverages: Sequence[float] = DEFAULT_COVERAGES
) -> dict[str, Any]:
    """AURC, E-AURC, the scores at each target coverage and the (thinned) curve, for JSON."""
    y, p = validate_probs(y_true, probs, where="selective_metrics")
    check_coverages(coverages)
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == y
    area = aurc(conf, correct)
    error = float(1.0 - correct.mean())
    at = {}
    for c in coverages:
        mask = accept_top(conf, c)
        at[coverage_key(c)] = {
            "target": float(c),
            "threshold": float(conf[mask].min()),
            **_subset_scores(y, pred, mask),
        }
    curve = risk_coverage_curve(conf, correct)
    keep = np.unique(np.linspace(0, len(curve["coverage"]) - 1, CURVE_POINTS).round().astype(int))
    return {
        "confidence": "max probability",
        "aurc": area,
        "eaurc": area - optimal_aurc(error),
        "error_rate": error,
        "at_coverage": at,
        "curve": {k: v[keep].tolist() for k, v in curve.items()},
    }


def check_coverages(coverages: Sequence[float]) -> None:
    """Every target coverage must be a number in (0, 1]."""
    bad = [c for c in coverages if isinstance(c, bool) or not 0 < float(c) <= 1]
    if bad or not len(coverages):
        raise EvaluationInputError(f"selective coverages {list(coverages)}: numbers in (0, 1]")


def fit_threshold(
    confidence: Any, correct: Any, coverage: float | None = None, risk: float | None = None
) -> dict[str, Any]:
    """The abstention threshold (accept confidence >= threshold) for one target.

    ``coverage=c``: the highest threshold that accepts at least ``c`` of the samples.
    ``risk=r``: the lowest threshold (largest coverage) whose accepted samples have an error
    rate <= ``r``; when not even the most confident tie reaches it, a threshold above every
    confidence (abstain on all) with ``achieved=False``. Returns the threshold and what it gives
    on these samples (``coverage``, ``risk``, ``n``).
    """
    if (coverage is None) == (risk is None):
        raise EvaluationInputError("give exactly one of coverage= or risk=")
    conf, ok = _check(confidence, correct)
    curve = risk_coverage_curve(conf, ok)
    if coverage is not None:
        check_coverages([coverage])
        i = int(np.searchsorted(curve["coverage"], float(coverage) - 1e-12))
        target = {"coverage": float(coverage)}
    else:
        if not 0 <= float(risk) < 1:
            raise EvaluationInputError(f"risk={risk}: a number in [0, 1)")
        meets = np.flatnonzero(curve["risk"] <= float(risk) + 1e-12)
        target = {"risk": float(risk)}
        if not len(meets):
            top = float(np.nextafter(conf.max(), np.inf))
            return {"threshold": top, "target": target, "achieved": False, "coverage": 0.0,
                    "risk": None, "n": len(conf)}  # fmt: skip
        i = int(meets[-1])
    return {
        "threshold": float(curve["threshold"][i]),
        "target": target,
        "achieved": True,
        "coverage": float(curve["coverage"][i]),
        "risk": float(curve["risk"][i]),
        "n": len(conf),
    }


def apply_threshold(y_true: Any, probs: Any, threshold: float) -> dict[str, Any]:
    """Coverage, risk, accuracy and balanced accuracy of the predictions a threshold accepts."""
    y, p = validate_probs(y_true, probs, where="apply_threshold")
    out = _subset_scores(y, p.argmax(1), p.max(1) >= float(threshold))
    return {"threshold": float(threshold), **out}


def _check(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1).astype(bool)
    if conf.size == 0 or conf.shape != ok.shape or not np.isfinite(conf).all():
        raise EvaluationInputError(
            f"selective prediction needs as many finite confidences ({conf.size}) as "
            f"correctness flags ({ok.size}), at least one"
        )
    return conf, ok
