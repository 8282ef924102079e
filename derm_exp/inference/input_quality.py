"""The input-quality gate: images a classifier of dermoscopy photographs should not answer for.

Research and education only; not a medical device.

Checked on the decoded 8-bit RGB image *before* it is resized for the network (resizing hides
exactly what is checked here: an 8x8 thumbnail becomes a smooth 224x224 blob). Every failed
check is a machine-readable reason; the prediction then abstains
(:mod:`derm_exp.inference.abstention`):

* ``input_too_small``: the shorter side is below ``min_side`` pixels (default 32);
* ``extreme_aspect_ratio``: long side / short side above ``max_aspect_ratio`` (default 4, so a
  4000x30 strip fails while 4:3 or 16:9 photos pass);
* ``nearly_uniform``: the standard deviation of the grey-level pixels is below ``min_std``
  (default 2 on the 0-255 scale): a blank, black or single-colour image;
* ``not_colour``: the mean over pixels of (largest - smallest channel) is below
  ``min_colourfulness`` (default 3 on 0-255): a greyscale image saved as RGB. Dermoscopy of skin
  is never grey (skin and lesion pigment differ strongly between red and blue).

The statistics are taken on a grid of at most ``STATS_SIDE`` x ``STATS_SIDE`` pixels sampled from
the image (nearest neighbour, no averaging, so the pixel spread is that of the image itself,
fine noise included), so a 12-megapixel photo costs as little as a thumbnail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image

from derm_exp.errors import PredictionInputError

STATS_SIDE = 256
QUALITY_REASONS = ("input_too_small", "extreme_aspect_ratio", "nearly_uniform", "not_colour")


@dataclass(frozen=True)
class QualityThresholds:
    """The limits of the gate (see the module docstring); a None limit switches its check off."""

    min_side: int | None = 32
    max_aspect_ratio: float | None = 4.0
    min_std: float | None = 2.0
    min_colourfulness: float | None = 3.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> QualityThresholds:
        """From a config/checkpoint mapping; missing keys keep the defaults, unknown ones fail."""
        return cls().updated(values or {})

    def updated(self, values: Mapping[str, Any]) -> QualityThresholds:
        """A copy with the non-null ``values`` replacing these limits (validated)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise PredictionInputError(
                f"unknown input-quality key(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        given = {k: v for k, v in values.items() if v is not None}
        for key, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise PredictionInputError(f"abstain.quality.{key}={value!r}: a number >= 0")
        return replace(self, **given)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_statistics(image: Image.Image) -> dict[str, float]:
    """Width, height, aspect ratio, grey-level std and colourfulness of an RGB image."""
    w, h = image.size
    small = image.convert("RGB")
    if max(w, h) > STATS_SIDE:
        size = (min(w, STATS_SIDE), min(h, STATS_SIDE))
        small = small.resize(size, Image.Resampling.NEAREST)
    # Per channel plane, elementwise: ``a @ weights`` goes through BLAS threads and
    # ``max(-1)`` over a 3-long axis is slow; together ~60 ms per image on a busy 2-core
    # machine (the service's profile, BENCHMARKS.md "Service"). Same values.
    r, g, b = (np.asarray(band) for band in small.split())
    grey = r * 0.299 + g * 0.587 + b * 0.114
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return {
        "width": float(w),
        "height": float(h),
        "aspect_ratio": float(max(w, h) / max(min(w, h), 1)),
        "std": float(grey.std()),
        "colourfulness": float(spread.mean()),
    }


def quality_reasons(image: Image.Image, limits: QualityThresholds | None = None) -> list[str]:
    """The reasons (in :data:`QUALITY_REASONS` order) why ``image`` fails the gate; [] = passes."""
    limits = limits or QualityThresholds()
    s = image_statistics(image)
    failed = {
        "input_too_small": limits.min_side is not None
        and min(s["width"], s["height"]) < limits.min_side,
        "extreme_aspect_ratio": limits.max_aspect_ratio is not None
        and s["aspect_ratio"] > limits.max_aspect_ratio,
        "nearly_uniform": limits.min_std is not None and s["std"] < limits.min_std,
        "not_colour": limits.min_colourfulness is not None
        and s["colourfulness"] < limits.min_colourfulness,
    }
    return [reason for reason in QUALITY_REASONS if failed[reason]]
