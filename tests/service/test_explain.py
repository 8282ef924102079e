"""Heat maps in the API: the PNG the page lays over the image, and ``explain=true``."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from derm_exp.service.explain import MAX_SIDE, heatmap_png
from tests.service.conftest import jpeg_part


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


def test_predict_with_explain_returns_the_heat_map(client, images: list[Path]) -> None:
    response = client.post("/predict", files=jpeg_part(images[0]), data={"explain": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "explanation_error" not in body, body.get("explanation_error")
    explanation = body["explanation"]
    assert explanation["method"] == "gradcam"
    assert explanation["target_class"] == body["predicted_class"]
    png = _decode(explanation["heatmap_png"])
    assert png.size == (64, 48) and png.mode == "RGBA"
    assert np.asarray(png)[..., 3].max() == 255


def test_onnx_backend_serves_predictions_and_refuses_heat_maps_clearly(
    served_model, images: list[Path]
) -> None:
    """backend=onnxruntime: the same answer as torch; explain=true says why there is no map."""
    from fastapi.testclient import TestClient

    from derm_exp.inference.prediction_model import load_prediction_model
    from derm_exp.service.app import create_app

    def serve(backend: str) -> TestClient:
        loaded = load_prediction_model(
            [str(served_model.checkpoint)],
            device="cpu",
            tracking_uri=served_model.tracking_uri,
            backend=backend,
        )
        return TestClient(create_app(loaded))

    with serve("onnxruntime") as onnx, serve("torch") as torch_client:
        got = onnx.post("/predict", files=jpeg_part(images[0]), data={"explain": "true"})
        want = torch_client.post("/predict", files=jpeg_part(images[0])).json()
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["predicted_class"] == want["predicted_class"]
    assert np.allclose(
        list(body["probabilities"].values()), list(want["probabilities"].values()), atol=1e-4
    )
    assert "explanation" not in body
    assert "torch backend" in body["explanation_error"]
