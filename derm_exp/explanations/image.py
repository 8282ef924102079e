"""Explain one image with a trained predictor: the heat map, its overlay, the probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from derm_exp.explanations.errors import ExplanationError
from derm_exp.explanations.methods import explain_batch
from derm_exp.explanations.overlay import input_box, overlay
from derm_exp.inference.image_input import ImageInput, to_rgb_image
from derm_exp.inference.predictor import SkinLesionPredictor


@dataclass
class Explanation:
    """One image's explanation.

    ``heatmap``: (H, W) float32 in [0, 1] at the model's input size (the centre crop the model
    sees); ``overlay``: the heat map over the whole input image, at the input's size (outside
    the crop the image is unchanged); ``probabilities``: class -> probability (calibrated as
    the predictor is).
    """

    method: str
    target_class: str
    heatmap: np.ndarray
    overlay: Image.Image
    probabilities: dict[str, float] = field(default_factory=dict)
    image: Image.Image | None = None

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


def target_index(classes: list[str], target: str | int | None, probs: np.ndarray) -> int:
    """Index of ``target`` (a class name or index); the most probable class when None."""
    if target is None:
        return int(np.argmax(probs))
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in classes:
            raise ExplanationError(
                f"unknown target class {target!r}; choose one of {', '.join(classes)}"
            )
        return classes.index(target)
    index = int(target)
    if not 0 <= index < len(classes):
        raise ExplanationError(f"target class index {index} out of range 0..{len(classes) - 1}")
    return index


def explain_image(
    predictor: SkinLesionPredictor,
    image: ImageInput,
    *,
    method: str = "gradcam",
    target: str | int | None = None,
    alpha: float = 0.45,
    metadata: Mapping[str, Any] | None = None,
) -> Explanation:
    """Explain ``predictor``'s output for one image (path, PIL image or array), with its
    patient ``metadata`` (``{"age": 55, "sex": "male", "localization": "back"}``) for a
    metadata-fusion model, as :meth:`SkinLesionPredictor.predict` takes it."""
    if not isinstance(predictor, SkinLesionPredictor):
        raise ExplanationError(
            "explanations need one model, not an ensemble: give model=<one checkpoint, run id "
            "or models:/ URI>"
        )
    rgb = to_rgb_image(image)
    x = predictor.preprocess(rgb)[None]
    encoded = predictor.encode_metadata(None if metadata is None else [metadata], 1)
    probs, _ = predictor.probabilities(x, metadata=encoded)
    index = target_index(predictor.classes, target, probs[0])
    net = predictor.eager_model
    heatmap = explain_batch(net, x, method=method, targets=[index], metadata=encoded)[0]
    box = input_box(rgb.size, predictor.data_config)
    return Explanation(
        method=method,
        target_class=predictor.classes[index],
        heatmap=heatmap,
        overlay=overlay(rgb, heatmap, alpha=alpha, box=box),
        probabilities={c: float(p) for c, p in zip(predictor.classes, probs[0], strict=True)},
        image=rgb,
    )
