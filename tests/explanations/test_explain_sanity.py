"""The sanity checks: model-parameter randomisation and target-class sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derm_exp.explanations import explain_batch
from derm_exp.explanations.sanity import cascade_groups, mean_spearman, sanity_check
from tests.explanations.conftest import toy_batch


def test_mean_spearman_tells_same_from_unrelated_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16)).astype(np.float32)
    assert mean_spearman(a, a) == pytest.approx(1.0)
    assert mean_spearman(a, a**3) == pytest.approx(1.0)  # ranks, not values
    assert abs(mean_spearman(a, rng.random((3, 16, 16)))) < 0.2
    assert np.isnan(mean_spearman(np.zeros((2, 4, 4)), a[:2, :4, :4]))  # constant: undefined


def test_cascade_goes_from_the_head_to_the_stem(toy_model: torch.nn.Module) -> None:
    names = [name for name, _ in cascade_groups(toy_model)]
    assert names[0] == "head" and names[-1] == "conv_stem"
    assert names.index("bn2") < names.index("blocks.4") < names.index("blocks.0")


def test_trained_maps_differ_from_randomised_and_between_classes(toy_model) -> None:
    x, _ = toy_batch(8, seed=11)
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    report = sanity_check(toy_model, x, method="gradcam")
    assert report.n_images == 8 and len(report.cascade) == len(cascade_groups(toy_model))
    # Measured on this toy model: ~0.2 after the full cascade, ~0.4 between classes.
    assert report.randomisation_spearman < 0.6
    assert report.class_sensitivity_spearman < 0.8
    assert set(report.metrics()) == {
        "explain/randomisation_spearman",
        "explain/randomisation_spearman_head",
        "explain/class_sensitivity_spearman",
    }
    after = toy_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the copy was randomised


def test_target_class_changes_the_map(toy_model) -> None:
    x, _ = toy_batch(4, seed=13)
    a = explain_batch(toy_model, x, method="gradcam", targets=[0, 0, 0, 0])
    b = explain_batch(toy_model, x, method="gradcam", targets=[3, 3, 3, 3])
    assert np.abs(a - b).reshape(4, -1).max(1).min() > 0.1


def test_same_model_gives_correlation_one(toy_model) -> None:
    x, _ = toy_batch(4, seed=17)
    a = explain_batch(toy_model, x, method="integrated_gradients")
    b = explain_batch(toy_model, x, method="integrated_gradients")
    assert mean_spearman(a, b) == pytest.approx(1.0, abs=1e-6)  # deterministic: the check can fail
