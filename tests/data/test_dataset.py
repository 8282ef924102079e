"""LesionDataset / load_image on awkward image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from derm_exp.data.dataset import LesionDataset
from derm_exp.data.errors import DataValidationError
from derm_exp.data.images import BadImageError, load_image


def save(img: Image.Image, path: Path, **kwargs) -> str:
    img.save(path, **kwargs)
    return str(path)


def test_modes_become_rgb(tmp_path: Path) -> None:
    gray = save(Image.new("L", (8, 6), 77), tmp_path / "l.png")
    rgba = Image.new("RGBA", (8, 6), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # transparent -> black, not white
    rgba_path = save(rgba, tmp_path / "rgba.png")
    palette = save(
        Image.new("RGB", (8, 6), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE),
        tmp_path / "p.png",
    )
    cmyk = save(Image.new("CMYK", (8, 6), (0, 0, 0, 0)), tmp_path / "cmyk.jpg")
    for path in (gray, rgba_path, palette, cmyk):
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (8, 6)
    assert load_image(gray).getpixel((1, 1)) == (77, 77, 77)
    assert load_image(rgba_path).getpixel((0, 0)) == (0, 0, 0)
    assert load_image(rgba_path).getpixel((1, 1)) == (200, 100, 50)
    assert load_image(palette).getpixel((1, 1)) == (10, 20, 30)
    assert min(load_image(cmyk).getpixel((1, 1))) >= 250  # CMYK 0,0,0,0 is white


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(Image.new("RGB", (20, 10), (90, 90, 90)), tmp_path / "exif.jpg", exif=exif)
    assert load_image(path).size == (10, 20)


def bad_files(tmp_path: Path) -> dict[str, str]:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    return {"truncated": str(truncated), "empty": str(empty), "text": str(text)}


def test_bad_files_raise_bad_image_error(tmp_path: Path) -> None:
    for kind, path in bad_files(tmp_path).items():
        with pytest.raises(BadImageError, match="cannot read image"):
            load_image(path)
        assert kind  # all three kinds are refused
    with pytest.raises(BadImageError):
        load_image(str(tmp_path / "missing.jpg"))


def test_decompression_bomb_is_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (40, 40)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: warning level
    with pytest.raises(BadImageError, match="DecompressionBomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2x: PIL's hard error
    with pytest.raises(BadImageError, match="DecompressionBomb"):
        load_image(path)


def frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": list(range(len(paths)))})


def test_dataset_items_and_skip(tmp_path: Path) -> None:
    good = [
        save(Image.new("RGB", (8, 8), (i * 40, 0, 0)), tmp_path / f"g{i}.png") for i in range(3)
    ]
    bad = bad_files(tmp_path)["truncated"]
    ds = LesionDataset(frame([good[0], bad, good[1], good[2]]), transform=np.asarray)
    assert len(ds) == 4
    x, y = ds[0]
    assert x.shape == (8, 8, 3) and y == 0
    x, y = ds[1]  # bad -> deterministically the next index
    assert y == 2 and x[0, 0, 0] == 40
    ds[1]
    assert ds.bad_images == [bad]  # counted once


def test_dataset_skip_wraps_and_all_bad(tmp_path: Path) -> None:
    files = bad_files(tmp_path)
    good = save(Image.new("RGB", (8, 8)), tmp_path / "g.png")
    ds = LesionDataset(frame([good, files["empty"]]), transform=None)
    assert ds[1][1] == 0  # wraps around to index 0
    with pytest.raises(DataValidationError, match="no readable image"):
        LesionDataset(frame([files["empty"], files["text"]]))[0]


def test_dataset_error_policy(tmp_path: Path) -> None:
    bad = bad_files(tmp_path)["empty"]
    ds = LesionDataset(frame([bad]), on_bad_image="error")
    with pytest.raises(DataValidationError, match="empty.jpg"):
        ds[0]
    with pytest.raises(ValueError, match="on_bad_image"):
        LesionDataset(frame([bad]), on_bad_image="ignore")
    with pytest.raises(DataValidationError, match="lacks column"):
        LesionDataset(pd.DataFrame({"path": [bad]}))


def test_dataset_with_tensor_transform(tmp_path: Path) -> None:
    from derm_exp.data.transforms import build_eval_transform

    path = save(Image.new("RGB", (20, 15), (255, 0, 0)), tmp_path / "r.png")
    tf = build_eval_transform(
        {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    )
    x, y = LesionDataset(frame([path]), tf)[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x[0], torch.ones(16, 16))
