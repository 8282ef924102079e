"""Class weights and weighted sampler against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derm_exp.data.sampling import (
    class_counts,
    class_weights,
    make_weighted_sampler,
    sample_weights,
)

LABELS = [0] * 6 + [1] * 3 + [2] * 1  # counts 6, 3, 1; class 3 absent


def test_class_counts() -> None:
    assert class_counts(LABELS, 4).tolist() == [6, 3, 1, 0]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        class_counts([0, 4], 4)


def test_class_weights_inverse_frequency() -> None:
    # raw = 1/6, 1/3, 1 -> mean 0.5 -> 1/3, 2/3, 2; absent class -> 0
    w = class_weights(LABELS, 4, power=1.0, clamp=None)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([1 / 3, 2 / 3, 2.0, 0.0]))


def test_class_weights_power_and_clamp() -> None:
    s = np.array([6, 3, 1]) ** -0.5
    expected = s / s.mean()
    w = class_weights(LABELS, 4, power=0.5, clamp=None)
    assert np.allclose(w[:3].numpy(), expected) and w[3] == 0
    clamped = class_weights(LABELS, 4, power=1.0, clamp=2.5)  # 1/3 -> 0.4
    assert torch.allclose(clamped, torch.tensor([0.4, 2 / 3, 2.0, 0.0]))
    assert torch.equal(class_weights(LABELS, 3, power=0.0), torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        class_weights([], 3)


def test_sample_weights_and_sampler() -> None:
    assert np.allclose(sample_weights(LABELS, 4, power=1.0)[[0, 6, 9]], [1 / 6, 1 / 3, 1.0])
    sampler = make_weighted_sampler(LABELS, 4, power=1.0, seed=3)
    assert sampler.num_samples == len(LABELS) and sampler.replacement
    assert torch.allclose(sampler.weights, torch.tensor(sample_weights(LABELS, 4, 1.0)))
    assert list(sampler) == list(make_weighted_sampler(LABELS, 4, power=1.0, seed=3))


def test_sampler_balances_classes() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    big = make_weighted_sampler(np.tile(labels, 20), 2, power=1.0, seed=0)
    drawn = np.tile(labels, 20)[list(big)]
    assert abs((drawn == 1).mean() - 0.5) < 0.02  # power=1: classes equally likely
    # power=0.5: P(class) ∝ n_c ** 0.5 -> 30 / (30 + 10) = 0.75 for the majority class
    half = make_weighted_sampler(np.tile(labels, 20), 2, power=0.5, seed=0)
    assert abs((np.tile(labels, 20)[list(half)] == 0).mean() - 0.75) < 0.02
