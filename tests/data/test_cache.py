"""Decoded-image cache: identical pixels, staleness, concurrent builders, loader integration."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from derm_exp.data.cache import (
    CachedImages,
    ResizeSpec,
    cache_spec_for,
    open_image_cache,
)
from derm_exp.data.dataset import LesionDataset, collate_images, split_batch_transform
from derm_exp.data.images import load_image
from derm_exp.data.transforms import build_eval_transform, build_train_transform

DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def smooth_image(path: Path, seed: int, size: tuple[int, int] = (60, 45)) -> str:
    """A JPEG with smooth gradients plus noise (resampling differences would show)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = [smooth_image(tmp_path / "img" / f"{i}.jpg", i) for i in range(6)]
    paths.append(smooth_image(tmp_path / "img" / "tall.jpg", 9, size=(40, 70)))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: load_image transposes it
    Image.open(paths[0]).save(tmp_path / "img" / "exif.jpg", exif=exif)
    rgba = Image.open(paths[1]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "img" / "alpha.png")
    return [*paths, str(tmp_path / "img" / "exif.jpg"), str(tmp_path / "img" / "alpha.png")]


def frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": [i % 7 for i in range(len(paths))]})


def test_cache_returns_pixels_identical_to_direct_decode_and_resize(
    images: list[str], tmp_path: Path
) -> None:
    eval_tf = build_eval_transform(DATA_CONFIG)
    per_image, batch_tf = split_batch_transform(eval_tf)
    spec = cache_spec_for(per_image, scale=1.15)
    assert spec == ResizeSpec((36,), "bicubic", True, None)  # floor(32 / 0.875): the eval resize
    cache = open_image_cache(images, spec, tmp_path / "cache")
    for i, path in enumerate(images):
        direct = np.asarray(eval_tf.transforms[0](load_image(path)))
        assert cache.array(i).dtype == np.uint8
        assert cache.array(i).tobytes() == direct.tobytes()
        assert cache.array(i).shape == direct.shape
    # The whole eval path (uint8 per image, float per batch) equals the predictor's transform.
    ds = LesionDataset(frame(images), per_image, images=cache)
    images_u8, labels = collate_images([ds[i] for i in range(len(ds))])
    batch = batch_tf.apply(images_u8)
    expected = torch.stack([eval_tf(load_image(p)) for p in images])
    assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    assert labels.tolist() == [i % 7 for i in range(len(images))]


def test_training_cache_is_scaled_for_random_resized_crop(images: list[str], tmp_path: Path):
    augment = OmegaConf.load(Path(__file__).parents[2] / "conf" / "augment" / "medium.yaml")
    per_image, batch_tf = split_batch_transform(build_train_transform(augment, DATA_CONFIG))
    spec = cache_spec_for(per_image, scale=1.5)
    assert spec is not None and spec.size == (48,)
    cache = open_image_cache(images, spec, tmp_path / "cache")
    assert min(cache.array(0).shape[:2]) == 48
    ds = LesionDataset(frame(images), per_image, images=cache)
    x, _ = ds[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 32, 32)
    batch = batch_tf.apply(collate_images([ds[i] for i in range(4)])[0])
    assert batch.dtype == torch.float32 and tuple(batch.shape) == (4, 3, 32, 32)


def test_crop_transform_reads_the_cache_without_copying_or_changing_it(
    images: list[str], tmp_path: Path
) -> None:
    augment = OmegaConf.load(Path(__file__).parents[2] / "conf" / "augment" / "light.yaml")
    per_image, _ = split_batch_transform(build_train_transform(augment, DATA_CONFIG))
    cache = open_image_cache(images, cache_spec_for(per_image, scale=1.15), tmp_path / "cache")
    before = (cache.directory / "pixels.u8").read_bytes()
    view = cache.view(0)
    assert not view.is_contiguous() and torch.equal(view, cache.image(0))  # same pixels
    assert np.shares_memory(view.numpy(), cache.array(0))  # no copy
    ds = LesionDataset(frame(images), per_image, images=cache)
    torch.manual_seed(0)
    got = [ds[i][0] for i in range(len(ds))]
    torch.manual_seed(0)
    expected = [per_image(cache.image(i)) for i in range(len(ds))]  # from private copies
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert (cache.directory / "pixels.u8").read_bytes() == before


def test_stale_entry_is_rebuilt_when_an_image_changes(images: list[str], tmp_path: Path):
    spec = ResizeSpec((20,))
    first = open_image_cache(images, spec, tmp_path / "cache")
    assert open_image_cache(images, spec, tmp_path / "cache").directory == first.directory
    stat = os.stat(images[2])
    smooth_image(Path(images[2]), seed=99)  # new content, same size ...
    os.utime(images[2], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime
    second = open_image_cache(images, spec, tmp_path / "cache")
    assert second.directory != first.directory
    assert not first.directory.exists(), "the stale version is removed"
    direct = np.asarray(spec.op()(load_image(images[2])))
    assert second.array(2).tobytes() == direct.tobytes()
    # stat keys notice a changed modification time
    by_stat = open_image_cache(images, spec, tmp_path / "cache", key="stat")
    os.utime(images[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert open_image_cache(images, spec, tmp_path / "cache", key="stat").directory != (
        by_stat.directory
    )


def test_unreadable_images_are_recorded_and_skipped(images: list[str], tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths = [images[0], str(broken), images[1]]
    cache = open_image_cache(paths, ResizeSpec((20,)), tmp_path / "cache")
    ds = LesionDataset(frame(paths), None, images=cache)
    x, label = ds[1]  # skipped to the next readable image, like the uncached dataset
    assert label == 2 and torch.equal(x, cache.image(2))
    assert ds.bad_images == [str(broken)]
    with pytest.raises(ValueError, match="other files"):
        LesionDataset(frame(paths[:2]), None, images=cache)


def _build_after_barrier(barrier, paths, spec, cache_dir, lock, queue) -> None:
    barrier.wait()
    entry = open_image_cache(paths, spec, cache_dir, lock=lock)
    queue.put(str(entry.directory))


@pytest.mark.parametrize("lock", [True, False], ids=["flock", "rename-only"])
def test_concurrent_builders_do_not_corrupt_the_cache(tmp_path: Path, lock: bool) -> None:
    paths = [smooth_image(tmp_path / "img" / f"{i}.jpg", i, size=(160, 120)) for i in range(24)]
    spec = ResizeSpec((50,))
    cache_dir = tmp_path / "cache"
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_build_after_barrier, args=(barrier, paths, spec, cache_dir, lock, queue)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    built = {queue.get(timeout=5), queue.get(timeout=5)}
    assert len(built) == 1
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert [p.name for p in entries] == [Path(next(iter(built))).name], "no temporary leftovers"
    cache = CachedImages(entries[0])
    for i, path in enumerate(paths):
        assert cache.array(i).tobytes() == np.asarray(spec.op()(load_image(path))).tobytes()


def test_loaders_give_the_same_eval_batches_with_and_without_cache(demo_root: Path, tmp_path):
    from derm_exp.training.data_setup import build_loaders, split_frame

    def loaders(cache: bool):
        data = OmegaConf.create(
            {
                "root": str(demo_root),
                "metadata_file": "HAM10000_metadata.csv",
                "split_seed": 0,
                "val_fraction": 0.2,
                "test_fraction": 0.2,
                "batch_size": 8,
                "eval_batch_size": 16,
                "num_workers": 0,
                "pin_memory": False,
                "sampler": "none",
                "on_bad_image": "skip",
                "cache": cache,
                "cache_dir": str(tmp_path / "cache"),
                "cache_scale": 1.15,
                "cache_key": "content",
            }
        )
        augment = OmegaConf.load(Path(__file__).parents[2] / "conf" / "augment" / "light.yaml")
        return build_loaders(split_frame(data), data, augment, DATA_CONFIG, torch.device("cpu"))

    cached, plain = loaders(True), loaders(False)
    assert cached.val.dataset.images is not None and plain.val.dataset.images is None
    eval_tf = build_eval_transform(DATA_CONFIG)  # the predictor's preprocessing
    direct = torch.stack([eval_tf(load_image(p)) for p in cached.val.dataset.paths])
    seen = 0
    for a, b in zip(cached.val, plain.val, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(a[0], direct[seen : seen + len(a[0])])
        seen += len(a[0])
    assert seen == len(direct)
    images, labels = next(iter(cached.train))
    assert images.dtype == torch.float32 and tuple(images.shape) == (8, 3, 32, 32)
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 3  # train, val and test entries
