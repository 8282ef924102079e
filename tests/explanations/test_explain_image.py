"""explain_image through a trained predictor, and the overlay / crop geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derm_exp.explanations import ExplanationError, explain_image, overlay
from derm_exp.explanations.overlay import input_box
from derm_exp.inference.predictor import SkinLesionPredictor


@pytest.fixture(scope="module")
def predictor(trained_model) -> SkinLesionPredictor:
    return SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu")


def _image(trained_model) -> Path:
    return sorted((Path(trained_model.data_root) / "images").glob("*.jpg"))[0]


def test_explain_image_gives_map_overlay_and_probabilities(predictor, trained_model) -> None:
    path = _image(trained_model)
    exp = explain_image(predictor, path)
    size = predictor.data_config["input_size"][-2:]
    assert exp.method == "gradcam" and exp.heatmap.shape == tuple(size)
    assert exp.heatmap.dtype == np.float32 and 0.0 <= exp.heatmap.min() <= exp.heatmap.max() <= 1
    assert exp.overlay.size == Image.open(path).size and exp.overlay.mode == "RGB"
    assert sorted(exp.probabilities) == sorted(predictor.classes)
    assert sum(exp.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert exp.target_class == max(exp.probabilities, key=exp.probabilities.get)
    expected = predictor.predict(path)["probabilities"]
    assert exp.probabilities == pytest.approx(expected, abs=1e-6)


def test_target_by_name_or_index(predictor, trained_model) -> None:
    path = _image(trained_model)
    by_name = explain_image(predictor, path, method="integrated_gradients", target="mel")
    by_index = explain_image(
        predictor, path, method="integrated_gradients", target=predictor.classes.index("mel")
    )
    assert by_name.target_class == by_index.target_class == "mel"
    np.testing.assert_allclose(by_name.heatmap, by_index.heatmap, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "melanoma"}, "unknown target class 'melanoma'"),
        ({"target": 7}, "out of range"),
        ({"method": "attention"}, "needs a head with its own attention map"),
        ({"method": "shap"}, "choose one of gradcam, integrated_gradients, attention"),
    ],
)
def test_bad_requests(predictor, trained_model, kwargs, match) -> None:
    with pytest.raises(ExplanationError, match=match):
        explain_image(predictor, _image(trained_model), **kwargs)


def test_overlay_keeps_the_image_where_the_map_is_zero() -> None:
    image = Image.fromarray(np.full((30, 40, 3), 120, np.uint8))
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    out = np.asarray(overlay(image, heat, alpha=0.5))
    assert out.shape == (30, 40, 3)
    assert (out[:, :15] == 120).all()  # zero map: image unchanged
    assert (out[:, 25:] != 120).any(axis=-1).all()  # hot: coloured
    assert (np.asarray(overlay(image, heat, alpha=0.0)) == 120).all()


def test_input_box_is_the_centre_crop_the_model_sees() -> None:
    config = {"input_size": (3, 64, 64), "crop_pct": 0.8, "crop_mode": "center"}
    # 200x150: shorter side 150 -> floor(64 / 0.8) = 80 (factor 1.875); 64 px crop = 120 px
    assert input_box((200, 150), config) == (40, 15, 160, 135)
    squash = {**config, "crop_mode": "squash"}
    assert input_box((200, 100), squash) == (20, 10, 180, 90)
