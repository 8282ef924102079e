"""The torch Dataset over a metadata/split frame, and the per-batch float conversion that lets
workers hand over uint8 images. Image decoding itself is :mod:`derm_exp.data.images`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from derm_exp.data.errors import DataValidationError
from derm_exp.data.images import BadImageError, load_image
from derm_exp.data.transforms import RandomCropFlip

if TYPE_CHECKING:
    from derm_exp.data.cache import CachedImages

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


class LesionDataset(Dataset):
    """``(image_tensor, label)`` items from a frame with ``path`` and ``label`` columns.

    ``on_bad_image="skip"`` replaces an unreadable image by the next readable index (wrapping
    around), so results are deterministic; each bad path is logged once and listed in
    :attr:`bad_images` (also those met in DataLoader worker processes: the flags live in shared
    memory). ``"error"`` raises :class:`DataValidationError` naming the file.

    With ``images`` (a :class:`~derm_exp.data.cache.CachedImages` built over the same paths in
    the same order) images come from the decoded-image cache as uint8 (3, H, W) tensors instead
    of decoded files; ``transform`` must then accept tensors (torchvision v2 transforms do).

    With ``metadata`` (an (N, M) float32 array, one encoded row per frame row, see
    :mod:`derm_exp.data.metadata_encoding`) items are ``(image, label, metadata_row)``.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Any], Any] | None = None,
        on_bad_image: str = "skip",
        images: CachedImages | None = None,
        metadata: np.ndarray | None = None,
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
        if metadata is not None and len(metadata) != len(self.paths):
            raise ValueError(f"{len(metadata)} metadata rows for {len(self.paths)} images")
        self.metadata = None if metadata is None else np.asarray(metadata, dtype=np.float32)
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

    def _read(self, i: int) -> Any:
        if self.images is None:
            return load_image(self.paths[i])
        # A transform that starts by copying a crop never writes into its input: hand it the
        # cached image without copying it first (0.05-0.1 ms per image, measured).
        ops = getattr(self.transform, "transforms", [self.transform])
        if ops and isinstance(ops[0], RandomCropFlip):
            return self.images.view(i)
        return self.images.image(i)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self.paths)
        for offset in range(n):
            i = (index + offset) % n
            try:
                img = self._read(i)
            except BadImageError as e:
                if self.on_bad_image == "error":
                    raise
                self._record_bad(i, e)
                continue
            out = self.transform(img) if self.transform is not None else img
            if self.metadata is not None:
                return out, self.labels[i], self.metadata[i]
            return out, self.labels[i]
        raise DataValidationError(f"no readable image in the dataset ({n} files tried)")


# Ops that act on each pixel independently (or per channel): the same on a batch as per image.
_ELEMENTWISE = (v2.ToDtype, v2.Normalize, v2.ToPureTensor)


def _float_target(op: Any, images: Any) -> torch.dtype | None:
    """The float dtype a ``ToDtype(scale=True)`` turns uint8 ``images`` into, else None."""
    dtype = op.dtype.get(tv_tensors.Image) if isinstance(op.dtype, dict) else op.dtype
    ok = op.scale and images.dtype == torch.uint8 and dtype is not None and dtype.is_floating_point
    return dtype if ok else None


def _new_channels_last(
    n: int, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device, shared: bool
) -> torch.Tensor:
    """An empty channels-last (N, C, H, W) tensor; in shared memory when ``shared``.

    A DataLoader worker otherwise copies every returned tensor into shared memory; allocating
    it there directly (as torch's ``default_collate`` does) saves that copy.
    """
    if not shared:
        return torch.empty((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)
    nbytes = n * c * h * w * torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage).view(n, h, w, c).permute(0, 3, 1, 2)


def stack_channels_last(images: Sequence[torch.Tensor], shared: bool = False) -> torch.Tensor:
    """Stack (C, H, W) images into one channels-last (N, C, H, W) batch.

    Images from the cache, from PIL and from the resize kernel are channels-last already, so
    each one is a plain copy (torch.stack would transpose them into a contiguous batch, 4x
    slower for uint8).
    """
    first = torch.as_tensor(images[0])
    c, h, w = first.shape
    out = _new_channels_last(len(images), c, h, w, first.dtype, first.device, shared)
    for dst, src in zip(out, images, strict=True):
        dst.copy_(torch.as_tensor(src))
    return out


def collate_images(batch: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """``collate_fn`` for ``(image, label[, metadata])`` samples: a channels-last batch of the
    images (in shared memory in a DataLoader worker) and the labels as an int64 numpy array.

    Workers hand over uint8 images this way and the consuming process converts them to float
    (:class:`BatchTransform`): a float batch is 4x the bytes, and writing it into fresh shared
    memory cost the workers more than the whole cached augmentation. The labels travel inside
    the message: a tensor would need a shared-memory segment and a file-descriptor exchange of
    its own, which cost 10-20 % of the cached loader's throughput (measured, 2 workers).
    Metadata rows, when the samples have them, come third as one (N, M) float32 numpy array.
    :class:`~derm_exp.training.data_setup.DeviceBatches` turns them into a tensor. Samples
    that are not (C, H, W) tensors go to torch's ``default_collate``.
    """
    first = batch[0][0]
    if not (isinstance(first, torch.Tensor) and first.ndim == 3):
        return torch.utils.data.default_collate(batch)
    in_worker = torch.utils.data.get_worker_info() is not None
    images = stack_channels_last([b[0] for b in batch], shared=in_worker)
    labels = np.array([int(b[1]) for b in batch], dtype=np.int64)
    if len(batch[0]) > 2:
        return images, labels, np.stack([b[2] for b in batch]).astype(np.float32, copy=False)
    return images, labels


def _to_float(images: torch.Tensor, dtype: torch.dtype, norm: v2.Normalize | None) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> a new channels-last float batch, scaled to [0, 1] and
    normalised by ``norm``.

    torchvision's ``to_dtype`` and ``normalize`` arithmetic, in its order (bit-identical), in
    one buffer without temporaries. Channels-last because the models run that way.

    On a CPU this uses numpy, one image at a time (it runs in the training process):

    - numpy is single-threaded: no OpenMP threads wake up and spin, taking a core from the
      loader workers;
    - its buffer for a whole batch gets transparent huge pages, a few page faults where
      torch's allocation took thousands (0.18 -> 0.07 ms per 224 px image of
      system time in the training process, measured with 2 workers);
    - each image stays in the CPU cache between the steps, and ``Normalize`` runs over it
      as (H, W*C) rows with mean/std repeated along the row: a contiguous inner loop, not
      one of 3 channels (0.10 vs 0.16 ms per 224 px image for the old batch-wide torch ops,
      one thread).
    """
    n, c, h, w = images.shape
    scale = 1.0 / torch.iinfo(torch.uint8).max
    if images.device.type != "cpu" or dtype != torch.float32:
        out = _new_channels_last(n, c, h, w, dtype, images.device, shared=False)
        out.copy_(images).mul_(scale)
        if norm is not None:
            v2.functional.normalize(out, norm.mean, norm.std, inplace=True)
        return out
    src = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) views, any strides
    dst = np.empty((n, h, w, c), np.float32)
    out = torch.from_numpy(dst).permute(0, 3, 1, 2)
    if norm is not None:
        mean = np.tile(np.asarray(norm.mean, np.float32), w)  # one row's pattern, (W*C,)
        std = np.tile(np.asarray(norm.std, np.float32), w)
    for d, x in zip(dst, src, strict=True):
        np.multiply(x, np.float32(scale), out=d)
        if norm is not None:
            row = d.reshape(h, w * c)
            np.subtract(row, mean, out=row)
            np.divide(row, std, out=row)
    return out


class BatchTransform:
    """The float part of a transform, run on a whole (B, 3, H, W) uint8 batch at once.

    Elementwise ops (``ToDtype``, ``Normalize``) run once on the batch, which gives the same
    numbers as per image at a fraction of the cost, on whatever device the batch is on; random
    ops (e.g. ``RandomErasing``) still draw their own parameters for every image. The uint8 ->
    float conversion and a ``Normalize`` right after it write into one new channels-last
    buffer (see :func:`_to_float`): bit-identical to torchvision, without its temporaries.
    """

    def __init__(self, ops: Sequence[Callable[[Any], Any]]) -> None:
        self.ops = list(ops)

    def apply(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 (B, 3, H, W), or a list of (3, H, W), -> the transform's output for every
        image, as one batch."""
        x: Any = images if isinstance(images, torch.Tensor) else stack_channels_last(images)
        owned = False  # x is a buffer of ours: in-place ops are safe
        ops = list(self.ops)
        while ops:
            op = ops.pop(0)
            dtype = _float_target(op, x) if isinstance(op, v2.ToDtype) else None
            if dtype is not None:
                norm = ops.pop(0) if ops and isinstance(ops[0], v2.Normalize) else None
                x, owned = _to_float(x, dtype, norm), True
            elif isinstance(op, v2.Normalize) and owned:
                v2.functional.normalize(x, op.mean, op.std, inplace=True)
            elif isinstance(op, _ELEMENTWISE):
                x = op(x)
            elif owned:  # per image, written back into our buffer
                for i in range(len(x)):
                    res = torch.as_tensor(op(x[i]))
                    if res.data_ptr() != x[i].data_ptr():
                        x[i].copy_(res)
            else:
                x = torch.stack([torch.as_tensor(op(img)) for img in x])
        return x.as_subclass(torch.Tensor)


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
