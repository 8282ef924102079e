"""Per-request work done before the batch: decode, preprocess, input-quality gate, metadata.

Research and education only; not a medical device.

Each upload is decoded, resized/normalised into the network's input tensor and checked by the
input-quality gate in a bounded pool of threads (``prep_threads``), outside the model thread,
so that work overlaps with the running forward instead of queueing behind it: the model
thread only stacks the ready tensors, runs one forward and builds the answers. Patient metadata
sent with the image is validated and encoded there too (:mod:`derm_exp.service.metadata`), and
travels with the upload, so one batch may mix requests with and without it. Batching on or
off, every request goes through the same steps. An ensemble (whose members may preprocess
differently) gets the decoded image and its metadata dict and runs its own ``predict_batch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from derm_exp.inference.input_quality import quality_reasons
from derm_exp.inference.prediction_model import PredictionModel
from derm_exp.service.limits import Limits, decode_image
from derm_exp.service.metadata import MetadataUse, predictors, resolve


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the batch: the decoded RGB image (explanations, its size), for a
    single classifier its network input and input-quality reasons, and its patient metadata
    (``metadata.record`` for the model, ``metadata.encoded`` for a single classifier)."""

    image: Image.Image
    tensor: torch.Tensor | None = None
    quality: list[str] | None = None
    metadata: MetadataUse | None = None


def prepare(
    loaded: PredictionModel,
    data: bytes,
    limits: Limits,
    metadata: Mapping[str, str] | None = None,
) -> Prepared:
    """Check ``metadata`` (the form fields given; 422 if unusable), decode ``data`` (4xx
    :class:`~derm_exp.service.limits.RequestError` if unusable) and, for one classifier,
    preprocess it as :meth:`SkinLesionPredictor.preprocess` does."""
    use = resolve(predictors(loaded), metadata or {})  # cheap: refused before decoding
    image = decode_image(data, limits)  # RGB, EXIF orientation applied: as to_rgb_image gives
    if loaded.is_ensemble:
        return Prepared(image, metadata=use)
    model = loaded.model
    quality = quality_reasons(image, model.abstention.quality)
    return Prepared(image, model.transform(image), quality, use)


def predict_prepared(
    loaded: PredictionModel, items: Sequence[Prepared], tta: str
) -> list[dict[str, Any]]:
    """One forward for ``items`` (x their TTA views): the answers ``predict_batch`` gives
    (with each item's own metadata)."""
    preset_name = None if tta == "none" else tta
    model = loaded.model
    records = [None if item.metadata is None else item.metadata.record for item in items]
    if loaded.is_ensemble or any(item.tensor is None for item in items):
        images = [item.image for item in items]
        meta = records if any(records) else None
        return model.predict_batch(images, batch_size=len(images), tta=preset_name, metadata=meta)
    preset = model.tta_preset(preset_name)
    batch = torch.stack([item.tensor for item in items])
    probs, per_view = model.probabilities(batch, preset, _encoded(model, items))
    return [
        model.result(probs[j], per_view[:, j], preset, item.quality) for j, item in enumerate(items)
    ]


def _encoded(model: Any, items: Sequence[Prepared]) -> torch.Tensor | None:
    """(B, M) encoded metadata of a metadata classifier's batch, "nothing known" for items
    without any; None when no item has metadata (or the model uses none)."""
    vectors = [None if item.metadata is None else item.metadata.encoded for item in items]
    if model.metadata_encoder is None or all(v is None for v in vectors):
        return None
    missing = torch.from_numpy(model.metadata_encoder.missing_vector())
    return torch.stack([missing if v is None else v for v in vectors])
