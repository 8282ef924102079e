"""Heat maps blended over images, and where the model's input lies in the original image."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

COLORMAP = "jet"


def colorize(heatmap: np.ndarray, colormap: str = COLORMAP) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    return (colormaps[colormap](values)[..., :3] * 255).round().astype(np.uint8)


def _resized(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float map bilinearly resized to PIL ``size`` (width, height)."""
    img = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    *,
    alpha: float = 0.45,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """The heat map (any size; resized to the image, or to ``box`` within it) blended over the
    image with a colour map: ``(1 - alpha * m) * image + alpha * m * colour``, so places the
    map scores zero keep the image as it is. ``box`` = (left, top, right, bottom)."""
    base = image.convert("RGB")
    left, top, right, bottom = box if box is not None else (0, 0, base.width, base.height)
    region = base.crop((left, top, right, bottom))
    values = np.clip(_resized(heatmap, region.size), 0.0, 1.0)[..., None]
    pixels = np.asarray(region, dtype=np.float32)
    weight = float(alpha) * values
    blended = (1.0 - weight) * pixels + weight * colorize(values[..., 0]).astype(np.float32)
    out = base.copy()
    out.paste(Image.fromarray(blended.round().clip(0, 255).astype(np.uint8)), (left, top))
    return out


def input_box(size: tuple[int, int], data_config: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The part (left, top, right, bottom) of an image of PIL ``size`` that the eval transform
    (:func:`derm_exp.data.transforms.build_eval_transform`: resize, centre crop) feeds the model."""
    width, height = size
    h, w = (int(v) for v in data_config["input_size"][-2:])
    crop_pct = float(data_config.get("crop_pct") or 0.875)
    if (data_config.get("crop_mode") or "center") == "squash":
        box_w = w * width / math.floor(w / crop_pct)
        box_h = h * height / math.floor(h / crop_pct)
    else:  # shorter side resized to floor(size / crop_pct), then a centred size x size crop
        factor = min(width, height) / math.floor(h / crop_pct)
        box_w, box_h = w * factor, h * factor
    left, top = round((width - box_w) / 2), round((height - box_h) / 2)
    return (
        max(0, left),
        max(0, top),
        min(width, left + round(box_w)),
        min(height, top + round(box_h)),
    )
