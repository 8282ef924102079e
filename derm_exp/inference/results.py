"""The prediction dict of one image: classes, probabilities, uncertainty, TTA details.

Shared by the single-model predictor and ensembles; abstention and the disclaimer are added by
the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_exp.data.metadata import CLASS_DESCRIPTIONS
from derm_exp.inference.aggregation import class_std, normalized_entropy
from derm_exp.inference.tta import TTAPreset

DISCLAIMER = "Research and education only; not a medical device. Do not use for diagnosis."
SINGLE_VIEW = TTAPreset("none", ("identity",), "mean")


def prediction_result(
    probs: np.ndarray,
    classes: Sequence[str],
    per_view: np.ndarray | None = None,
    preset: TTAPreset = SINGLE_VIEW,
    calibrated: bool = True,
    temperature: float | None = 1.0,
) -> dict[str, Any]:
    """``predicted_class`` (and its description), ``confidence``, ``probabilities`` by class,
    ``uncertainty`` (normalised entropy), ``calibrated``, ``temperature`` (left out when None:
    an ensemble's members each have their own); with more than one view also ``view_std`` (the
    predicted class's probability across views) and ``tta``."""
    top = int(np.argmax(probs))
    cls = classes[top]
    out: dict[str, Any] = {
        "predicted_class": cls,
        "predicted_class_description": CLASS_DESCRIPTIONS.get(cls, cls),
        "confidence": float(probs[top]),
        "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        "uncertainty": float(normalized_entropy(probs)),
        "calibrated": calibrated,
    }
    if temperature is not None:
        out["temperature"] = temperature
    if per_view is not None and per_view.shape[0] > 1:
        out["view_std"] = float(class_std(per_view, top))
        out["tta"] = tta_info(preset)
    return out


def tta_info(preset: TTAPreset) -> dict[str, Any]:
    """The ``tta`` entry of a prediction made with several views."""
    return {"mode": preset.mode, "views": list(preset.views), "aggregation": preset.aggregation}
