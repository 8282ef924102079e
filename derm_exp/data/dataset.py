"""Image loading (any PIL mode -> RGB), the torch Dataset over a metadata/split frame, and the
per-batch float conversion that lets workers hand over uint8 images."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from derm_exp.data.metadata import DataValidationError

if TYPE_CHECKING:
    from derm_exp.data.cache import CachedImages

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


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


class LesionDataset(Dataset):
    """``(image_tensor, label)`` items from a frame with ``path`` and ``label`` columns.

    ``on_bad_image="skip"`` replaces an unreadable image by the next readable index (wrapping
    around), so results are deterministic; each bad path is logged once and listed in
    :attr:`bad_images` (also those met in DataLoader worker processes: the flags live in shared
    memory). ``"error"`` raises :class:`DataValidationError` naming the file.

    With ``images`` (a :class:`~derm_exp.data.cache.CachedImages` built over the same paths in
    the same order) images come from the decoded-image cache as uint8 (3, H, W) tensors instead
    of decoded files; ``transform`` must then accept tensors (torchvision v2 transforms do).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Any], Any] | None = None,
        on_bad_image: str = "skip",
        images: CachedImages | None = None,
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
        if images is not None and images.sources != self.paths:
            raise ValueError("the image cache was built for other files than this frame's paths")
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.images = images
        # One flag per image in shared memory: skips in worker processes reach the trainer.
        self._bad = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def bad_images(self) -> list[str]:
        """Paths skipped as unreadable so far, in dataset order."""
        return [self.paths[i] for i in self._bad.nonzero().flatten().tolist()]

    def _record_bad(self, i: int, err: BadImageError) -> None:
        if not self._bad[i]:
            self._bad[i] = True
            log.warning("skipping unreadable image (%s)", err)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.paths)
        for offset in range(n):
            i = (index + offset) % n
            try:
                img = self.images.image(i) if self.images is not None else load_image(self.paths[i])
            except BadImageError as e:
                if self.on_bad_image == "error":
                    raise
                self._record_bad(i, e)
                continue
            out = self.transform(img) if self.transform is not None else img
            return out, self.labels[i]
        raise DataValidationError(f"no readable image in the dataset ({n} files tried)")


# Ops that act on each pixel independently (or per channel): the same on a batch as per image.
_ELEMENTWISE = (v2.ToDtype, v2.Normalize, v2.ToPureTensor)


def _float_target(op: Any, images: Any) -> torch.dtype | None:
    """The float dtype a ``ToDtype(scale=True)`` turns uint8 ``images`` into, else None."""
    dtype = op.dtype.get(tv_tensors.Image) if isinstance(op.dtype, dict) else op.dtype
    first = images[0] if isinstance(images, list | tuple) else images
    ok = op.scale and first.dtype == torch.uint8 and dtype is not None and dtype.is_floating_point
    return dtype if ok else None


def _new_batch(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, shared: bool
) -> torch.Tensor:
    """An empty contiguous tensor; in shared memory when ``shared``.

    A DataLoader worker otherwise copies every returned tensor into shared memory;
    allocating it there directly (as torch's ``default_collate`` does) saves that copy.
    Contiguous (N, C, H, W), not channels-last: per-channel ops broadcast 4x faster over it on
    a CPU; the training step converts the batch once, multi-threaded.
    """
    if not shared:
        return torch.empty(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class BatchTransform:
    """The float part of a transform, run on a whole (B, 3, H, W) uint8 batch at once.

    Elementwise ops (``ToDtype``, ``Normalize``) run once on the batch, which gives the same
    numbers as per image at a fraction of the cost, on whatever device the batch is on; random
    ops (e.g. ``RandomErasing``) still draw their own parameters for every image. Calling the
    object on a list of ``(image, label)`` samples makes it a ``collate_fn``.

    The uint8 -> float conversion writes into one new buffer and ``Normalize`` then works in
    place on it: the same operations, in the same order, as torchvision's ``to_dtype`` and
    ``normalize``, hence bit-identical results, without their temporary copies (this halves
    the cost of this step on a CPU).
    """

    def __init__(self, ops: Sequence[Callable[[Any], Any]]) -> None:
        self.ops = list(ops)

    def apply(
        self, images: torch.Tensor | Sequence[torch.Tensor], shared: bool = False
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W), or a list of (3, H, W), -> the transform's output for every
        image, stacked; ``shared`` puts the float batch in shared memory (for a worker)."""
        x: Any = images
        owned = False  # x is a buffer of ours: in-place ops are safe
        for op in self.ops:
            dtype = _float_target(op, x) if isinstance(op, v2.ToDtype) else None
            if dtype is not None:
                first = x[0]
                out = _new_batch((len(x), *first.shape), dtype, first.device, shared)
                if isinstance(x, torch.Tensor):
                    out.copy_(x)
                else:
                    for dst, src in zip(out, x, strict=True):
                        dst.copy_(src)
                x, owned = out.mul_(1.0 / torch.iinfo(torch.uint8).max), True
            elif isinstance(op, v2.Normalize) and owned:
                v2.functional.normalize(x, op.mean, op.std, inplace=True)
            elif isinstance(op, _ELEMENTWISE):
                x = op(x if isinstance(x, torch.Tensor) else torch.stack(list(x)))
            elif owned:  # per image, written back into our buffer
                for i in range(len(x)):
                    res = torch.as_tensor(op(x[i]))
                    if res.data_ptr() != x[i].data_ptr():
                        x[i].copy_(res)
            else:
                x = torch.stack([torch.as_tensor(op(img)) for img in x])
        if not isinstance(x, torch.Tensor):
            x = torch.stack(list(x))
        return x.as_subclass(torch.Tensor)

    def __call__(
        self, batch: Sequence[tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = [torch.as_tensor(x) for x, _ in batch]
        labels = torch.tensor([int(y) for _, y in batch], dtype=torch.int64)
        in_worker = torch.utils.data.get_worker_info() is not None
        return self.apply(images, shared=in_worker), labels


def split_batch_transform(transform: Any) -> tuple[Any, BatchTransform | None]:
    """Split a ``v2.Compose`` before its ``ToDtype``: a per-image part that ends with uint8
    tensors (cheap to hand over from workers) and a :class:`BatchTransform` for the rest.

    Returns ``(transform, None)`` when there is nothing to split.
    """
    ops = list(getattr(transform, "transforms", []))
    cut = next((i for i, op in enumerate(ops) if isinstance(op, v2.ToDtype)), None)
    if not cut:
        return transform, None
    return v2.Compose(ops[:cut]), BatchTransform(ops[cut:])
