"""Images given to a predictor (paths, PIL images, arrays) as the RGB images training saw.

Paths go through the dataset's own loader (:func:`derm_exp.data.images.load_image`: EXIF
orientation applied, any mode to 8-bit RGB, transparency composited onto black), so a file gives
the same probabilities in prediction as in evaluation; in-memory images and arrays get the same
conversion.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from derm_exp.data.images import load_image, to_rgb
from derm_exp.errors import PredictionInputError

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def to_rgb_image(image: ImageInput) -> Image.Image:
    """A path, PIL image or array (HxW, HxWx1, HxWx3, HxWx4) as 8-bit RGB, like the dataset.

    Float arrays are read as [0, 1] (or as 0..255 when their maximum exceeds 1); integer arrays
    above 255 as 16-bit. Paths go through the dataset's own loader.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image).expanduser()
        if not path.is_file():
            raise PredictionInputError(f"image not found: {path}")
        return load_image(str(path))
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image))
    raise PredictionInputError(
        f"unsupported image type {type(image).__name__}: pass a file path, a PIL image or a "
        "numpy array (HxW, HxWx3 or HxWx4)"
    )


def _array_to_pil(array: np.ndarray) -> Image.Image:
    a = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.size == 0:
        raise PredictionInputError(
            f"image array of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    if a.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(a))
    if a.dtype == bool:
        a = a.astype(np.float64)
    elif not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise PredictionInputError(f"image array of dtype {a.dtype}: use uint8 or float")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise PredictionInputError("image array contains NaN or inf values")
    peak = a.max(initial=0.0)
    if np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
        a = a * 255.0 if peak <= 1.0 else a
    elif peak > 255:
        a = a / 257.0  # 16-bit -> 8-bit, as the dataset does for 16-bit files
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def as_image_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    """One image (path, PIL, HxW[xC] array) or a sequence / (N, H, W[, C]) array -> list."""
    if isinstance(images, str | os.PathLike | Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        return (
            [images]
            if images.ndim == 2
            or (images.ndim == 3 and images.shape[-1] in (1, 3, 4) and images.dtype != object)
            else list(images)
        )
    return list(images)
