"""Shared fixtures: tiny HAM10000-format folders written on the fly (no ../shared needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derm_exp.data.metadata import CLASSES
from derm_exp.data.synthetic import generate_demo_dataset

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (20, 15)) -> Path:
    """A small random RGB JPEG/PNG (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def balanced_rows(lesions_per_class: int = 4, images_per_lesion: int = 2) -> list[tuple[str, ...]]:
    """(lesion_id, image_id, dx) rows with every class present."""
    rows = []
    for ci, dx in enumerate(CLASSES):
        for li in range(lesions_per_class):
            lesion = f"HAM_{ci}{li:03d}"
            rows += [(lesion, f"ISIC_{ci}{li:03d}{k}", dx) for k in range(images_per_lesion)]
    return rows


@pytest.fixture(name="balanced_rows")
def balanced_rows_fixture() -> Callable[..., list[tuple[str, ...]]]:
    """:func:`balanced_rows` (fixtures instead of ``from conftest import``: module name clashes)."""
    return balanced_rows


@pytest.fixture(name="write_image")
def write_image_fixture() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def csv_header() -> str:
    return HEADER


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dataset(rows, images=None, layout="images", csv_text=None) -> root``.

    ``rows`` are (lesion_id, image_id, dx) tuples; ``images`` the image ids to write (default:
    every row's); ``layout="parts"`` spreads them over HAM10000_images_part_1/_part_2.
    """
    counter = iter(range(10**6))

    def make(
        rows: Sequence[tuple[str, ...]] = (),
        images: Sequence[str] | None = None,
        layout: str = "images",
        csv_text: str | None = None,
    ) -> Path:
        root = tmp_path / f"ds{next(counter)}"
        root.mkdir()
        if csv_text is None:
            lines = [HEADER] + [f"{les},{img},{dx},histo,50.0,male,back" for les, img, dx in rows]
            csv_text = "\n".join(lines) + "\n"
        (root / "HAM10000_metadata.csv").write_text(csv_text)
        ids = [r[1] for r in rows] if images is None else list(images)
        for i, image_id in enumerate(ids):
            folder = "images" if layout == "images" else f"HAM10000_images_part_{1 + i % 2}"
            write_image(root / folder / f"{image_id}.jpg", seed=i)
        if not ids:
            (root / "images").mkdir(exist_ok=True)
        return root

    return make


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic demo dataset (120 images, 64x48), generated once per session."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", 120, 0, (64, 48))
