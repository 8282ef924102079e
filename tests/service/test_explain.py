"""Heat maps in the API: the PNG the page lays over the image, and ``explain=true``."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from derm_exp.service.explain import MAX_SIDE, heatmap_png


def _decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_heatmap_png_covers_the_crop_and_is_transparent_elsewhere() -> None:
    heatmap = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    png = _decode(heatmap_png(heatmap, (200, 150), box=(25, 0, 175, 150)))
    assert png.mode == "RGBA" and png.size == (200, 150)
    alpha = np.asarray(png)[..., 3]
    assert (alpha[:, :25] == 0).all() and (alpha[:, 175:] == 0).all()
    assert (alpha[:, 25:175] == 255).all()
    rgb = np.asarray(png)[..., :3].astype(int)
    assert rgb[0, 26, 2] > rgb[0, 26, 0]  # low values are blue (jet) ...
    assert rgb[149, 174, 0] > rgb[149, 174, 2]  # ... high ones red


def test_heatmap_png_of_a_large_image_is_at_most_max_side() -> None:
    png = _decode(heatmap_png(np.zeros((8, 8)), (4000, 3000)))
    assert png.size == (MAX_SIDE, 384)
