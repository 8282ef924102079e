"""ECE edge cases, reliability curve and temperature scaling."""

import numpy as np
import pytest
import torch

from derm_exp.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def test_confidence_exactly_one_is_counted():
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 1])  # one right, one wrong, both at confidence 1.0
    curve = reliability_curve(probs, y, n_bins=10)
    assert curve["count"][-1] == 2 and curve["count"].sum() == 2
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.5)


def test_empty_bins_are_skipped():
    probs = np.array([[0.95, 0.05]] * 4)
    y = np.array([0, 0, 0, 1])
    curve = reliability_curve(probs, y, n_bins=10)
    assert curve["count"].tolist() == [0] * 9 + [4]
    assert np.isnan(curve["accuracy"][:9]).all() and np.isnan(curve["confidence"][:9]).all()
    assert curve["accuracy"][-1] == pytest.approx(0.75)
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.2)


def test_hand_computed_example():
    # 5 bins of width 0.2; confidences 0.65, 0.65 (bin [0.6, 0.8), one right), 0.9 (last bin).
    probs = np.array([[0.65, 0.35], [0.35, 0.65], [0.9, 0.1]])
    y = np.array([0, 0, 0])
    # bin [0.6,0.8): acc 0.5, conf 0.65 -> 2/3 * 0.15; bin [0.8,1.0]: acc 1, conf 0.9 -> 1/3 * 0.1
    assert expected_calibration_error(probs, y, n_bins=5) == pytest.approx(0.1 + 0.1 / 3)
    curve = reliability_curve(probs, y, n_bins=5)
    np.testing.assert_allclose(curve["bin_edges"], np.linspace(0, 1, 6))
    assert curve["count"].tolist() == [0, 0, 0, 2, 1]


def test_perfectly_calibrated_toy_is_near_zero():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, size=n)
    correct = rng.uniform(size=n) < conf
    y = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], axis=1)
    assert expected_calibration_error(probs, y, n_bins=15) < 0.01


def _overconfident_toy(n=2000, c=7, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    return logits * 5.0, y  # well-posed logits scaled x5: far too confident


def _nll(probs, y):
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def test_temperature_scaling_reduces_nll_on_overconfident_model():
    logits, y = _overconfident_toy()
    t = fit_temperature(logits, y)
    assert t > 1.0
    before = _nll(apply_temperature(logits, 1.0), y)
    after = _nll(apply_temperature(logits, t), y)
    assert after < before
    # the fitted T should roughly undo the x5 scaling
    assert 3.0 < t < 8.0
    assert expected_calibration_error(apply_temperature(logits, t), y) < expected_calibration_error(
        apply_temperature(logits, 1.0), y
    )


def test_temperature_accepts_tensors_and_returns_tensor():
    logits, y = _overconfident_toy(n=300)
    t = fit_temperature(torch.tensor(logits, dtype=torch.float32), torch.tensor(y))
    probs = apply_temperature(torch.tensor(logits), t)
    assert isinstance(probs, torch.Tensor)
    torch.testing.assert_close(probs.sum(-1), torch.ones(300, dtype=probs.dtype))
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)
