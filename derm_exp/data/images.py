"""Image decoding: open any image file as fully decoded 8-bit RGB, or fail with one clear error.

The basics every data module needs (metadata validation, the dataset, the decoded-image cache,
prediction); this module imports nothing of ``derm_exp.data`` but its error type.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

from derm_exp.data.errors import DataValidationError


class BadImageError(DataValidationError):
    """An image file that cannot be decoded (missing, empty, truncated, too large, not an image)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels are composited onto black (the dark vignette of dermoscopy images) instead
    of exposing whatever colour hides under alpha=0. 16/32-bit integer and float images are
    scaled to 8 bits (PIL's own ``convert`` clips them to 0..255 instead).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 65535 -> 255
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Open ``path`` fully decoded, EXIF-orientation applied, as 8-bit RGB.

    Raises :class:`BadImageError` for unreadable files, including decompression bombs (images
    above ``PIL.Image.MAX_IMAGE_PIXELS`` are refused, not just warned about).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                img = ImageOps.exif_transpose(im)
                return to_rgb(img)
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise BadImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
