"""Eval transform == timm's eval pipeline; every augment preset builds and runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from timm.data import create_transform
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from derm_exp.config import CONF_DIR
from derm_exp.data.transforms import (
    RandomCropFlip,
    RandomRot90,
    build_eval_transform,
    build_train_transform,
)

PRESETS = sorted((CONF_DIR / "augment").glob("*.yaml"))


def data_config(size: int = 32, crop_pct: float = 0.875, interpolation: str = "bicubic") -> dict:
    return {
        "input_size": (3, size, size),
        "interpolation": interpolation,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": crop_pct,
        "crop_mode": "center",
    }


def random_image(w: int = 60, h: int = 45, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "config",
    [
        data_config(32, 0.875, "bicubic"),
        data_config(48, 1.0, "bilinear"),
        data_config(57, 0.95, "nearest"),
        {**data_config(40, 0.9), "crop_mode": "squash"},
    ],
)
@pytest.mark.parametrize("shape", [(60, 45), (45, 60)])
def test_eval_matches_timm(config: dict, shape: tuple[int, int]) -> None:
    img = random_image(*shape)
    expected = create_transform(**config, is_training=False)(img)
    got = build_eval_transform(config)(img)
    assert type(got) is torch.Tensor and got.dtype == torch.float32
    assert got.shape == expected.shape
    # Same resize kernels and crop; only float rounding of the normalisation differs (~1e-6).
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_eval_rejects_unsupported_geometry() -> None:
    with pytest.raises(ValueError, match="unsupported eval geometry"):
        build_eval_transform({**data_config(), "crop_mode": "border"})


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: Path(p).stem)
def test_every_augment_preset(preset: Path) -> None:
    cfg = OmegaConf.load(preset)
    transform = build_train_transform(cfg, data_config(32))
    torch.manual_seed(0)
    for seed in range(4):
        out = transform(random_image(seed=seed))
        assert type(out) is torch.Tensor
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_no_augmentation_equals_eval() -> None:
    cfg = OmegaConf.load(CONF_DIR / "augment" / "none.yaml")
    img = random_image()
    assert torch.equal(
        build_train_transform(cfg, data_config())(img), build_eval_transform(data_config())(img)
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [({"hflip": 1.5}, "augment.hflip"), ({"crop_scale": [0.9, 0.5]}, "augment.crop_scale")],
)
def test_bad_augment_values(override: dict, message: str) -> None:
    cfg = {
        **OmegaConf.to_container(OmegaConf.load(CONF_DIR / "augment" / "light.yaml")),
        **override,
    }
    with pytest.raises(ValueError, match=message):
        build_train_transform(cfg, data_config())


def test_random_rot90_is_lossless() -> None:
    arr = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    img = Image.fromarray(arr)
    rotations = {np.rot90(arr, k).tobytes() for k in range(4)}
    torch.manual_seed(0)
    seen_pil = {np.asarray(RandomRot90()(img)).tobytes() for _ in range(40)}
    assert seen_pil == rotations
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    seen = {RandomRot90()(tensor).permute(1, 2, 0).numpy().tobytes() for _ in range(40)}
    assert seen == rotations


def _crop_flip(**kw: object) -> RandomCropFlip:
    args = {"size": (24, 24), "scale": (0.3, 1.0), "interpolation": InterpolationMode.BICUBIC}
    return RandomCropFlip(**{**args, **kw})  # type: ignore[arg-type]


def test_crop_flip_tensor_path_equals_torchvision_ops() -> None:
    """The channels-last fast path gives torchvision's resized_crop + flips, pixel for pixel."""
    arr = np.random.default_rng(1).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    image = tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1))  # the cache's layout
    op = _crop_flip(hflip=0.5, vflip=0.5, rot90=True)
    torch.manual_seed(0)
    for _ in range(20):
        p = op.make_params([image])
        out = op.transform(image, p)
        ref = TF.resized_crop(
            image.as_subclass(torch.Tensor).contiguous(),
            p["top"],
            p["left"],
            p["height"],
            p["width"],
            [24, 24],
            InterpolationMode.BICUBIC,
            antialias=True,
        )
        if p["hflip"]:
            ref = ref.flip(-1)
        if p["vflip"]:
            ref = ref.flip(-2)
        ref = torch.rot90(ref, p["k"], dims=(-2, -1))
        assert isinstance(out, tv_tensors.Image) and torch.equal(out.as_subclass(torch.Tensor), ref)
    # PIL input (the JPEG path) gives the same geometry
    pil = op(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and pil.size == (24, 24)


def test_crop_flip_draws_like_torchvision_random_resized_crop() -> None:
    """Same crop distribution as v2.RandomResizedCrop (area and aspect ratio), flips at their
    probability, all four rotations."""
    image = torch.zeros(3, 258, 344, dtype=torch.uint8)
    op, ref = (
        _crop_flip(scale=(0.5, 1.0), hflip=0.3, rot90=True),
        v2.RandomResizedCrop(24, scale=(0.5, 1.0)),
    )
    torch.manual_seed(0)
    ours = [op.make_params([image]) for _ in range(3000)]
    theirs = [ref.make_params([image]) for _ in range(3000)]

    def stats(params: list[dict]) -> np.ndarray:
        area = np.array([p["height"] * p["width"] for p in params]) / (258 * 344)
        aspect = np.log([p["width"] / p["height"] for p in params])
        top = np.array([p["top"] / max(1, 258 - p["height"]) for p in params])
        return np.array([area.mean(), area.std(), aspect.mean(), aspect.std(), top.mean()])

    np.testing.assert_allclose(stats(ours), stats(theirs), atol=0.03)
    assert all(
        0 <= p["top"] <= 258 - p["height"] and 0 <= p["left"] <= 344 - p["width"] for p in ours
    )
    assert abs(np.mean([p["hflip"] for p in ours]) - 0.3) < 0.03
    assert not any(p["vflip"] for p in ours)  # vflip=0
    assert {p["k"] for p in ours} == {0, 1, 2, 3}
