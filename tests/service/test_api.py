"""The REST API in-process (FastAPI's TestClient): predictions, the model card, health, and
every bad upload refused with a 4xx JSON error while the server keeps answering."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derm_exp.inference.predictor import DISCLAIMER
from derm_exp.models.checkpoint import checkpoint_metadata, load_checkpoint
from tests.service.conftest import jpeg_part, png_bomb


def test_predict_gives_the_predictors_probabilities(client, loaded, images: list[Path]) -> None:
    response = client.post("/predict", files=jpeg_part(images[0]))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = loaded.model.predict(images[0])  # the same file through the Python API
    assert body["predicted_class"] == expected["predicted_class"]
    probs = np.array([body["probabilities"][c] for c in loaded.model.classes])
    want = np.array([expected["probabilities"][c] for c in loaded.model.classes])
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert body["predicted_class"] == loaded.model.classes[int(probs.argmax())]
    assert body["disclaimer"] == DISCLAIMER
    assert body["image"] == {"width": 64, "height": 48}
    assert 0.0 <= body["uncertainty"] <= 1.0


def test_predict_with_tta_reports_the_views(client, images: list[Path]) -> None:
    response = client.post("/predict", files=jpeg_part(images[1]), data={"tta": "light"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tta"]["mode"] == "light" and len(body["tta"]["views"]) == 4
    assert body["view_std"] >= 0.0


def test_png_and_grey_uploads_are_converted_like_the_dataset(client) -> None:
    buffer = io.BytesIO()
    Image.new("LA", (40, 30), (128, 255)).save(buffer, format="PNG")
    response = client.post("/predict", files={"image": ("g.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 40, "height": 30}


def test_model_card_comes_from_the_checkpoint(client, served_model) -> None:
    card = client.get("/model").json()
    meta = checkpoint_metadata(load_checkpoint(served_model.checkpoint), served_model.checkpoint)
    assert [c["name"] for c in card["classes"]] == meta.classes
    assert card["data_fingerprint"] == meta.data_fingerprint
    assert card["calibration"]["temperature"] == pytest.approx(meta.temperature)
    assert card["validation"]["monitor"] == meta.monitor
    assert card["validation"]["value"] == pytest.approx(meta.best["value"])
    assert card["architecture"]["backbone"] == "test_efficientnet"
    assert card["disclaimer"] == DISCLAIMER
    assert "none" in card["tta_modes"] and card["limits"]["max_upload_bytes"] == 10 * 1024 * 1024


def test_model_card_of_a_run_id_has_the_test_metrics(served_model) -> None:
    from derm_exp.inference.prediction_model import load_prediction_model
    from derm_exp.service.model_card import model_card

    loaded = load_prediction_model(
        [served_model.run_id], device="cpu", tracking_uri=served_model.tracking_uri
    )
    card = model_card(loaded)
    assert card["source"]["kind"] == "run"
    assert 0.0 <= card["test_metrics"]["balanced_accuracy"] <= 1.0


def test_health_and_openapi_docs(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and "checkpoint" in health["model"]
    assert health["batching"]["enabled"] is True
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/model"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def _truncated_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _upload(name: str, data: bytes, kind: str) -> dict:
    return {"image": (name, data, kind)}


BAD_UPLOADS = {
    "empty": (lambda img: _upload("e.jpg", b"", "image/jpeg"), 400, "empty"),
    "text file": (lambda img: _upload("t.txt", b"just text\n", "text/plain"), 415, "content type"),
    "text sent as a JPEG": (
        lambda img: _upload("t.jpg", b"just text\n", "image/jpeg"),
        400,
        "not an image",
    ),
    "truncated JPEG": (
        lambda img: _upload("t.jpg", _truncated_jpeg(img), "image/jpeg"),
        400,
        "decoded",
    ),
    "PNG bomb": (lambda img: _upload("b.png", png_bomb(), "image/png"), 413, "too many pixels"),
    "50 MB file": (
        lambda img: _upload("big.jpg", b"\xff" * (50 << 20), "image/jpeg"),
        413,
        "too large",
    ),
    "wrong content type": (
        lambda img: _upload("x.pdf", img.read_bytes(), "application/pdf"),
        415,
        "content type",
    ),
    "GIF as image/png": (lambda img: _upload("x.png", _gif(), "image/png"), 415, "format"),
}


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_json_error_and_the_server_keeps_serving(
    client, images: list[Path], case: str
) -> None:
    make, status, words = BAD_UPLOADS[case]
    response = client.post("/predict", files=make(images[0]))
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    good = client.post("/predict", files=jpeg_part(images[0]))
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    ("data", "files", "words"),
    [
        ({"tta": "huge"}, True, "unknown TTA mode"),
        ({"explain": "maybe"}, True, "explain"),
        ({}, False, "image: Field required"),
    ],
)
def test_bad_form_fields_are_422(client, images, data, files, words) -> None:
    response = client.post("/predict", data=data, files=jpeg_part(images[0]) if files else None)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]


def test_an_oversized_body_without_content_length_is_cut_off(client) -> None:
    """A chunked upload (no Content-Length) is refused once 10 MB have streamed in: the app
    stops reading there (called as ASGI, counting the chunks it pulls)."""
    import asyncio

    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
    chunks = [head + b"Content-Type: image/jpeg\r\n\r\n"] + [b"\xff" * (1 << 20)] * 50
    pulled, sent = [], []

    async def receive() -> dict:
        pulled.append(1)
        more = len(pulled) < len(chunks)
        return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": more}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"too large" in sent[1]["body"]
    assert len(pulled) <= 12  # 10 MB (+ the form's allowance), not 50
