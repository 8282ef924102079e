"""The input-quality gate and the abstention policy, without a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from derm_exp.config import PROJECT_ROOT
from derm_exp.errors import PredictionInputError
from derm_exp.inference.abstention import REASONS, AbstentionPolicy
from derm_exp.inference.input_quality import (
    QualityThresholds,
    image_statistics,
    quality_reasons,
)


def odd_images() -> dict[str, Image.Image]:
    """What users really drop, with the reasons each must give."""
    rng = np.random.default_rng(0)
    colour = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    grey = np.repeat(rng.integers(0, 256, (150, 200, 1), dtype=np.uint8), 3, axis=2)
    return {
        "thumbnail": Image.fromarray(colour(8, 8)),
        "strip": Image.fromarray(colour(30, 4000)),
        "grey": Image.fromarray(grey),
        "uniform": Image.new("RGB", (200, 150), (200, 120, 90)),
        "black": Image.new("RGB", (200, 150)),
    }


EXPECTED = {
    "thumbnail": ["input_too_small"],
    "strip": ["input_too_small", "extreme_aspect_ratio"],
    "grey": ["not_colour"],
    "uniform": ["nearly_uniform"],
    "black": ["nearly_uniform", "not_colour"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_odd_inputs_fail_the_gate_for_their_reasons(name: str) -> None:
    assert quality_reasons(odd_images()[name]) == EXPECTED[name]


def test_demo_lesions_and_ordinary_photo_shapes_pass(demo_data: Path) -> None:
    images = sorted((demo_data / "images").glob("*.jpg"))[:40]
    assert images
    for path in images:
        with Image.open(path) as img:
            assert quality_reasons(img.convert("RGB")) == [], (path, image_statistics(img))
    # a 16:9 photo and a large 4:1 panorama are still fine shapes
    rng = np.random.default_rng(1)
    for h, w in ((450, 800), (300, 1200)):
        assert quality_reasons(Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))) == []


def test_limits_are_configurable_and_validated() -> None:
    small = odd_images()["thumbnail"]
    assert quality_reasons(small, QualityThresholds(min_side=0)) == []
    assert quality_reasons(small, QualityThresholds(min_side=None)) == []
    assert QualityThresholds().updated({"min_side": None}).min_side == 32  # null keeps
    with pytest.raises(PredictionInputError, match="unknown input-quality key"):
        QualityThresholds().updated({"min_size": 3})
    with pytest.raises(PredictionInputError, match="min_std"):
        QualityThresholds().updated({"min_std": -1})


def test_train_config_defaults_match_the_code_defaults() -> None:
    """Checkpoints store conf/train.yaml's limits; older ones fall back on the code's."""
    train = OmegaConf.load(PROJECT_ROOT / "conf" / "train.yaml")
    assert dict(train.abstain.quality) == QualityThresholds().as_dict()
    assert train.abstain.max_view_std == AbstentionPolicy().max_view_std


def test_policy_reasons_in_order() -> None:
    policy = AbstentionPolicy(threshold=0.6)
    assert policy.decide(0.9) == {
        "decision": "predict",
        "reasons": [],
        "abstention": {"threshold": 0.6, "target": None, "source": "none", "enabled": True},
    }
    got = policy.reasons(
        0.5, quality=["not_colour"], view_std=0.3, disagreement=0.5, member_std=0.0
    )
    assert got == ["low_confidence", "tta_disagreement", "ensemble_disagreement", "not_colour"]
    assert set(got) <= set(REASONS)
    assert policy.reasons(0.6) == []  # at the threshold: accepted, as when it was fitted
    assert policy.reasons(0.9, member_std=0.3) == ["ensemble_disagreement"]
    assert policy.reasons(0.9, disagreement=0.0, member_std=0.1) == []
    off = policy.with_overrides({"enabled": False})
    assert off.decide(0.1, quality=["input_too_small"])["decision"] == "predict"


def test_old_checkpoints_have_no_threshold_but_keep_the_gate() -> None:
    policy = AbstentionPolicy.from_checkpoint(None)
    assert policy.threshold is None and policy.source == "none"
    assert policy.decide(0.01, quality=["input_too_small"])["reasons"] == ["input_too_small"]
    assert policy.decide(0.01)["decision"] == "predict"


def test_checkpoint_entry_and_overrides() -> None:
    entry = {
        "threshold": 0.42,
        "target": {"coverage": 0.9},
        "max_view_std": 0.2,
        "quality": {"min_side": 64, "max_aspect_ratio": 3.0, "min_std": 4.0,
                    "min_colourfulness": 3.0},
    }  # fmt: skip
    policy = AbstentionPolicy.from_checkpoint(entry)
    assert (policy.threshold, policy.max_view_std, policy.quality.min_side) == (0.42, 0.2, 64)
    assert policy.describe()["target"] == {"coverage": 0.9}
    over = policy.with_overrides(
        {"threshold": 0.7, "max_view_std": None, "quality": {"min_side": None, "min_std": 1}}
    )
    assert (over.threshold, over.max_view_std) == (0.7, 0.2)
    assert (over.quality.min_side, over.quality.min_std) == (64, 1)
    assert over.describe()["source"] == "config (abstain.threshold)" and over.target is None
    with pytest.raises(PredictionInputError, match="unknown abstain key"):
        policy.with_overrides({"coverage": 0.9})
    with pytest.raises(PredictionInputError, match="abstain.threshold"):
        policy.with_overrides({"threshold": "high"})


def test_ensemble_threshold_is_the_members_mean() -> None:
    a, b = AbstentionPolicy(threshold=0.4), AbstentionPolicy(threshold=0.6)
    assert AbstentionPolicy.for_ensemble([a, b]).threshold == pytest.approx(0.5)
    assert AbstentionPolicy.for_ensemble([a, AbstentionPolicy()]).threshold is None
