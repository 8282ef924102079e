"""The per-batch float part of a transform: bit-identical to torchvision per image; workers'
uint8 batches are channels-last and in shared memory."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from derm_exp.data.dataset import BatchTransform, collate_images, split_batch_transform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images(n: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # (3, H, W) views of (H, W, 3) arrays: the layout the image cache hands out.
    return [
        torch.randint(0, 256, (20, 16, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)
        for _ in range(n)
    ]


def test_batch_equals_per_image_torchvision_exactly() -> None:
    full = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
            v2.ToPureTensor(),
        ]
    )
    per_image, batch_tf = split_batch_transform(full)
    assert batch_tf is not None and len(per_image.transforms) == 1  # ToImage stays per image
    images = _images()
    expected = torch.stack([full(img) for img in images])
    for given in (images, torch.stack(images)):  # a worker's list, or a batch on a device
        out = batch_tf.apply(given)
        assert type(out) is torch.Tensor and out.dtype == torch.float32
        assert torch.equal(out, expected)  # same ops in the same order: not just allclose
        assert out.is_contiguous(memory_format=torch.channels_last)  # on a CPU, as models run
    assert all(img.dtype == torch.uint8 for img in images)  # inputs untouched


def test_random_ops_after_normalize_draw_per_image_and_write_back() -> None:
    ops = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=1.0, value=0.0),
    ]
    images = _images(6)
    out = BatchTransform(ops).apply(images)
    erased = [(out[i] == 0).all(0) for i in range(len(images))]
    assert all(e.any() for e in erased)  # every image erased, written into the batch
    assert len({e.nonzero()[0].tolist().__repr__() for e in erased}) > 1  # own boxes each
    plain = v2.Compose(ops[:2])(torch.stack(images))
    assert torch.equal(
        out[~torch.stack(erased).unsqueeze(1).expand_as(out)],
        plain[~torch.stack(erased).unsqueeze(1).expand_as(out)],
    )


class _Items(Dataset):
    def __init__(self) -> None:
        self.images = _images(4)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], i


def test_workers_hand_over_uint8_channels_last_batches_in_shared_memory() -> None:
    direct, labels = collate_images(list(_Items()))
    assert not direct.is_shared()  # not in a worker: ordinary memory
    assert direct.dtype == torch.uint8 and torch.equal(direct, torch.stack(_Items().images))
    assert direct.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3]  # no tensor: no shm
    loader = DataLoader(_Items(), batch_size=4, num_workers=1, collate_fn=collate_images)
    ((images, labels),) = list(loader)
    assert images.is_shared() and torch.equal(images, direct) and labels.tolist() == [0, 1, 2, 3]


def test_float_conversion_is_the_same_on_any_layout_and_dtype_path() -> None:
    ops = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    images = torch.stack(_images(3))  # contiguous (N, C, H, W): numpy path on strided input
    expected = v2.Compose(ops)(images)
    assert torch.equal(BatchTransform(ops).apply(images), expected)
    wide = [v2.ToDtype(torch.float64, scale=True), v2.Normalize(MEAN, STD)]  # the torch path
    assert torch.equal(BatchTransform(wide).apply(images), v2.Compose(wide)(images))
