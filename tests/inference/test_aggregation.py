"""One aggregation for TTA views and ensemble members: which names apply where, and the edges."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from derm_exp.errors import PredictionInputError
from derm_exp.inference.aggregation import (
    MEMBER_AGGREGATIONS,
    VIEW_AGGREGATIONS,
    aggregate,
    class_std,
    entropy,
    normalized_entropy,
    uncertainty,
)
from derm_exp.inference.ensemble import EnsemblePredictor
from derm_exp.inference.members import Member
from derm_exp.inference.tta import preset_from_config, views_to_probabilities

ROOT = Path(__file__).resolve().parents[2]


def test_max_is_renormalised_by_hand() -> None:
    probs = np.array([[[0.8, 0.1, 0.1]], [[0.2, 0.5, 0.3]]])
    assert aggregate(probs, "max")[0] == pytest.approx(np.array([0.8, 0.5, 0.3]) / 1.6)


def test_views_and_members_accept_their_own_aggregations_only() -> None:
    with pytest.raises(
        PredictionInputError, match=r"tta.aggregation='weighted_mean': choose one of mean, geom"
    ):
        preset_from_config(
            OmegaConf.create({"views": ["identity"], "aggregation": "weighted_mean"})
        )
    with pytest.raises(PredictionInputError, match=r"aggregation='max': choose one of mean, weig"):
        EnsemblePredictor([Member("m/1", Path("m.pt"), ["a", "b"], "f")], [], "max")
    with pytest.raises(PredictionInputError, match=r"aggregation='weighted_mean'"):
        views_to_probabilities(np.zeros((2, 1, 3)), 1.0, "weighted_mean")


@pytest.mark.parametrize("aggregation", VIEW_AGGREGATIONS)
def test_tta_views_go_through_the_shared_aggregation(aggregation: str) -> None:
    logits = torch.randn(4, 6, 5) * 3
    probs = views_to_probabilities(logits, 1.5, aggregation)
    assert probs.dtype == np.float32  # as the evaluation and the predictor have always had
    expected = aggregate(torch.softmax(logits / 1.5, -1).numpy(), aggregation)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    single = views_to_probabilities(logits[0], 1.5)  # one view: the plain softmax, unaggregated
    assert np.array_equal(single, torch.softmax(logits[0] / 1.5, -1).numpy())


def test_entropy_and_spread_of_one_source_set() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert entropy(p) == pytest.approx([math.log(2), math.log(3)])
    assert normalized_entropy(p) == pytest.approx([math.log(2) / math.log(3), 1.0])
    views = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])  # one image, 3 views (V, C)
    assert class_std(views, 0) == pytest.approx(np.std([0.9, 0.5, 0.7]))
    # the ensemble's std is the same spread, per image
    unc = uncertainty(views[:, None, :], aggregate(views[:, None, :], "mean"))
    assert unc["std"][0] == pytest.approx(class_std(views, 0))


def test_documented_aggregations_are_the_modules() -> None:
    members, views = " | ".join(MEMBER_AGGREGATIONS), "|".join(VIEW_AGGREGATIONS)
    assert members in (ROOT / "conf" / "ensemble.yaml").read_text()
    predict = (ROOT / "conf" / "predict.yaml").read_text()
    assert members in predict and f"tta.aggregation={views}" in predict
    readme = (ROOT / "README.md").read_text()
    assert (
        f'aggregation="{views}"' in readme
        and f"aggregation={'|'.join(MEMBER_AGGREGATIONS)}" in readme
    )
