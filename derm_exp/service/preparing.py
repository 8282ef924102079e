"""Per-request work done before the batch: decode, preprocess, input-quality gate.

Research and education only; not a medical device.

Each upload is decoded, resized/normalised into the network's input tensor and checked by the
input-quality gate in a bounded pool of threads (``prep_threads``), outside the model thread,
so that work overlaps with the running forward instead of queueing behind it: the model
thread only stacks the ready tensors, runs one forward and builds the answers. Batching on or
off, every request goes through the same steps. An ensemble (whose members may preprocess
differently) gets the decoded image and runs its own ``predict_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from derm_exp.inference.input_quality import quality_reasons
from derm_exp.inference.prediction_model import PredictionModel
from derm_exp.service.limits import Limits, decode_image


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the batch: the decoded RGB image (explanations, its size) and,
    for a single classifier, its network input and input-quality reasons."""

    image: Image.Image
    tensor: torch.Tensor | None = None
    quality: list[str] | None = None


def prepare(loaded: PredictionModel, data: bytes, limits: Limits) -> Prepared:
    """Decode ``data`` (4xx :class:`~derm_exp.service.limits.RequestError` if unusable) and,
    for one classifier, preprocess it as :meth:`SkinLesionPredictor.preprocess` does."""
    image = decode_image(data, limits)  # RGB, EXIF orientation applied: as to_rgb_image gives
    if loaded.is_ensemble:
        return Prepared(image)
    model = loaded.model
    return Prepared(image, model.transform(image), quality_reasons(image, model.abstention.quality))


def predict_prepared(
    loaded: PredictionModel, items: Sequence[Prepared], tta: str
) -> list[dict[str, Any]]:
    """One forward for ``items`` (x their TTA views): the answers ``predict_batch`` gives."""
    preset_name = None if tta == "none" else tta
    model = loaded.model
    if loaded.is_ensemble or any(item.tensor is None for item in items):
        images = [item.image for item in items]
        return model.predict_batch(images, batch_size=len(images), tta=preset_name)
    preset = model.tta_preset(preset_name)
    probs, per_view = model.probabilities(torch.stack([item.tensor for item in items]), preset)
    return [
        model.result(probs[j], per_view[:, j], preset, item.quality) for j, item in enumerate(items)
    ]
