"""Risk-coverage, AURC, selective balanced accuracy and the threshold fit, on known arrays."""

from __future__ import annotations

import math

import mlflow.utils.validation as mlflow_validation
import numpy as np
import pytest

from derm_exp.evaluation.calibration import EvaluationInputError
from derm_exp.evaluation.report import evaluate_predictions, flat_metrics
from derm_exp.evaluation.selective import (
    aurc,
    fit_threshold,
    optimal_aurc,
    risk_coverage_curve,
    selective_metrics,
)
from derm_exp.evaluation.selective_plots import plot_risk_coverage

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_curve_and_aurc_by_hand() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, False, True, False])
    curve = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["risk"], [0.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(curve["threshold"], conf)
    assert aurc(conf, correct) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_ties_are_never_split() -> None:
    """A constant confidence: one point, AURC = the error rate (not order-dependent)."""
    correct = np.array([True, False, True, True])
    curve = risk_coverage_curve(np.full(4, 0.5), correct)
    assert curve["coverage"].tolist() == [1.0] and curve["risk"].tolist() == [0.25]
    assert aurc(np.full(4, 0.5), correct) == pytest.approx(0.25)
    assert aurc(np.full(4, 0.5), correct[::-1]) == pytest.approx(0.25)


def test_perfect_ranking_reaches_the_optimal_aurc() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(1000) < 0.7
    conf = np.where(correct, 0.5 + rng.random(1000) / 2, rng.random(1000) / 2)
    r = 1 - correct.mean()
    # the discrete optimum tends to r + (1 - r) ln(1 - r) as N grows
    assert aurc(conf, correct) == pytest.approx(optimal_aurc(r), abs=2e-3)
    assert aurc(-conf, correct) > aurc(np.zeros(1000), correct) > aurc(conf, correct)
    assert optimal_aurc(0.0) == 0.0 and optimal_aurc(1.0) == 1.0


def test_selective_balanced_accuracy_at_coverage() -> None:
    # 10 samples, 2 classes: the 2 least confident are the 2 errors
    probs = np.zeros((10, 7))
    conf = np.linspace(0.95, 0.5, 10)
    y = np.array([0, 1] * 5)
    pred = y.copy()
    pred[-2:] = 1 - pred[-2:]
    probs[np.arange(10), pred] = conf
    probs[np.arange(10), 6] += 1 - conf
    m = selective_metrics(y, probs, (0.8, 0.5))
    at80 = m["at_coverage"]["cov80"]
    assert (at80["coverage"], at80["risk"], at80["balanced_accuracy"]) == (0.8, 0.0, 1.0)
    assert at80["threshold"] == pytest.approx(conf[7])
    assert m["error_rate"] == pytest.approx(0.2)
    assert m["eaurc"] == pytest.approx(m["aurc"] - optimal_aurc(0.2))
    assert m["eaurc"] == pytest.approx(0.0, abs=0.02)  # errors ranked last
    assert m["curve"]["coverage"][-1] == 1.0


def test_fit_threshold_for_a_coverage_or_a_risk() -> None:
    conf = np.arange(100, 0, -1) / 100.0  # 1.00, 0.99, ..., 0.01
    correct = np.ones(100, dtype=bool)
    correct[[5, 50, 70, 90]] = False
    got = fit_threshold(conf, correct, coverage=0.9)
    assert got["coverage"] == 0.9 and got["threshold"] == pytest.approx(0.11)
    got = fit_threshold(conf, correct, risk=0.03)
    # largest coverage with error rate <= 3 %: the first 70 (2 errors in 70)
    assert got["coverage"] == 0.7 and got["risk"] == pytest.approx(2 / 70)
    assert got["target"] == {"risk": 0.03} and got["achieved"]
    assert fit_threshold(conf, np.ones(100, bool), risk=0.0)["coverage"] == 1.0
    never = fit_threshold(conf, np.zeros(100, bool), risk=0.1)
    assert not never["achieved"] and (conf < never["threshold"]).all()
    with pytest.raises(EvaluationInputError, match="exactly one"):
        fit_threshold(conf, correct, coverage=0.9, risk=0.1)
    with pytest.raises(EvaluationInputError):
        fit_threshold(conf, correct, coverage=1.5)


def test_fit_sees_only_what_it_is_given() -> None:
    """The threshold is a function of the validation arrays alone: other ("test") labels
    changing cannot move it (the end-of-run fit passes nothing else, see test_abstention)."""
    rng = np.random.default_rng(3)
    val_conf, val_ok = rng.random(200), rng.random(200) < 0.7
    first = fit_threshold(val_conf, val_ok, coverage=0.9)
    _ = rng.permutation(200)  # a "test" set shuffled: nothing to pass
    assert fit_threshold(val_conf.copy(), val_ok.copy(), coverage=0.9) == first


def test_report_holds_selective_metrics_with_mlflow_safe_names() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 300)
    probs = rng.dirichlet(np.ones(7), 300)
    probs[np.arange(300), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    sharp = probs**2 / (probs**2).sum(1, keepdims=True)
    result = evaluate_predictions(y, probs, CLASSES, n_boot=0, calibrated_probs=sharp)
    assert result["selective"]["probabilities"] == "calibrated"
    flat = flat_metrics(result, "test/")
    for name in (
        "test/aurc",
        "test/eaurc",
        "test/selective_balanced_accuracy_cov90",
        "test/selective_balanced_accuracy_cov80",
        "test/selective_risk_cov90",
    ):
        assert math.isfinite(flat[name]), name
    for name in flat:  # every metric name is one MLflow accepts
        mlflow_validation._validate_metric_name(name)
    # confident predictions are the right ones here: abstaining lowers the error
    assert flat["test/selective_risk_cov80"] < 1 - result["accuracy"]
    fig = plot_risk_coverage(result["selective"], {"threshold": 0.5, "coverage": 0.9, "risk": 0.1})
    assert fig.axes[0].get_xlabel().startswith("Coverage")
