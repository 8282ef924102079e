"""Image loading (any PIL mode -> RGB) and the torch Dataset over a metadata/split frame."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from derm_exp.data.metadata import DataValidationError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


class BadImageError(DataValidationError):
    """An image file that cannot be decoded (missing, empty, truncated, too large, not an image)."""


def _to_rgb(img: Image.Image) -> Image.Image:
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
                return _to_rgb(img)
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise BadImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


class LesionDataset(Dataset):
    """``(image_tensor, label)`` items from a frame with ``path`` and ``label`` columns.

    ``on_bad_image="skip"`` replaces an unreadable image by the next readable index (wrapping
    around), so results are deterministic; each bad path is logged once and listed in
    :attr:`bad_images`. With DataLoader workers the list fills in the worker processes, not
    here. ``"error"`` raises :class:`DataValidationError` naming the file.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}"
            )
        missing = [c for c in ("path", "label") if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"dataset frame lacks column(s) {missing}; "
                "build it with load_metadata/split_dataset"
            )
        self.paths: list[str] = [str(p) for p in frame["path"]]
        self.labels: list[int] = [int(x) for x in frame["label"]]
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.bad_images: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def _record_bad(self, path: str, err: BadImageError) -> None:
        if path not in self.bad_images:
            self.bad_images.append(path)
            log.warning("skipping unreadable image (%s)", err)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.paths)
        for offset in range(n):
            i = (index + offset) % n
            try:
                img = load_image(self.paths[i])
            except BadImageError as e:
                if self.on_bad_image == "error":
                    raise
                self._record_bad(self.paths[i], e)
                continue
            out = self.transform(img) if self.transform is not None else img
            return out, self.labels[i]
        raise DataValidationError(f"no readable image in the dataset ({n} files tried)")
