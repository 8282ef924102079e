"""Patient metadata through the service: ``POST /predict`` with ``age``/``sex``/``localization``
gives the predictor's own probabilities for that metadata (one request, or mixed in one batch
with requests without it), a bad value is a 422 that leaves the server serving, an image-only
model ignores the fields and says so, ``GET /model`` lists the inputs, the page offers them.

The models are the metadata tests' checkpoints (tests/metadata/test_metadata_checkpoints.py:
the tiny network with ``model.metadata=concat`` or ``none`` and its stored encoder, written
without training: the service only needs a checkpoint whose output depends on the metadata).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from derm_exp.inference.prediction_model import PredictionModel, load_prediction_model
from derm_exp.service.app import STATIC, ServiceSettings, create_app
from derm_exp.service.batching import BatchSettings
from derm_exp.service.limits import Limits
from derm_exp.service.preparing import predict_prepared, prepare
from tests.metadata.test_metadata_checkpoints import ENCODER, write_checkpoint

FULL = {"age": 55, "sex": "male", "localization": "back"}
FORM_FULL = {k: str(v) for k, v in FULL.items()}


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _load(path: Path, uri: str) -> PredictionModel:
    return load_prediction_model([str(path)], device="cpu", tracking_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("metadata_service")
    return base, f"sqlite:///{base}/mlflow.db"


@pytest.fixture(scope="module")
def meta_loaded(store) -> PredictionModel:
    base, uri = store
    return _load(write_checkpoint(base / "concat.pt", "concat"), uri)


@pytest.fixture(scope="module")
def plain_loaded(store) -> PredictionModel:
    base, uri = store
    return _load(write_checkpoint(base / "none.pt", "none"), uri)


@pytest.fixture(scope="module")
def meta_client(meta_loaded) -> Iterator[TestClient]:
    with TestClient(create_app(meta_loaded)) as c:
        yield c


@pytest.fixture(scope="module")
def uploads() -> list[bytes]:
    return [_jpeg(seed) for seed in range(6)]


def _post(client: TestClient, data: bytes, form: dict | None = None) -> httpx.Response:
    return client.post("/predict", files={"image": ("x.jpg", data, "image/jpeg")}, data=form)


def _probs(result: dict, classes: list[str]) -> np.ndarray:
    return np.array([result["probabilities"][c] for c in classes])


def _expected(loaded: PredictionModel, data: bytes, metadata: dict | None) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    (result,) = loaded.model.predict_batch([image], metadata=[metadata])
    return _probs(result, loaded.model.classes)


def test_predict_with_metadata_gives_the_predictors_probabilities(
    meta_client, meta_loaded, uploads
) -> None:
    classes = meta_loaded.model.classes
    response = _post(meta_client, uploads[0], FORM_FULL)
    assert response.status_code == 200, response.text
    body = response.json()
    got = _probs(body, classes)
    np.testing.assert_allclose(got, _expected(meta_loaded, uploads[0], FULL), atol=1e-6)
    # The metadata matters to this model: without it the answer differs.
    assert np.abs(got - _expected(meta_loaded, uploads[0], None)).max() > 1e-5
    assert body["metadata_used"] is True
    meta = body["metadata"]
    assert meta["model_uses_metadata"] is True
    assert meta["used"] == {"age": 55.0, "sex": "male", "localization": "back"}
    assert meta["missing"] == meta["unknown"] == meta["ignored"] == []
    assert "used age, sex, localization" in meta["note"]
    for key in ("predicted_class", "confidence", "uncertainty", "decision", "disclaimer"):
        assert key in body  # the response keys from before metadata stay
    assert body["image"] == {"width": 64, "height": 48}


def test_predict_without_metadata_is_the_predictor_with_none(
    meta_client, meta_loaded, uploads
) -> None:
    body = _post(meta_client, uploads[1]).json()
    expected = _expected(meta_loaded, uploads[1], None)
    np.testing.assert_allclose(_probs(body, meta_loaded.model.classes), expected, atol=1e-6)
    assert body["metadata_used"] is False
    assert body["metadata"]["missing"] == ["age", "sex", "localization"]
    empty = _post(meta_client, uploads[1], {"age": "", "sex": " ", "localization": "unknown"})
    assert empty.status_code == 200, empty.text
    np.testing.assert_allclose(_probs(empty.json(), meta_loaded.model.classes), expected, atol=1e-6)
    assert empty.json()["metadata_used"] is False


def test_the_heat_map_is_explained_with_the_requests_metadata(meta_client, uploads) -> None:
    with_meta = _post(meta_client, uploads[2], {**FORM_FULL, "explain": "true"}).json()
    assert "explanation_error" not in with_meta, with_meta.get("explanation_error")
    assert with_meta["explanation"]["metadata_used"] is True
    assert with_meta["explanation"]["target_class"] == with_meta["predicted_class"]
    without = _post(meta_client, uploads[2], {"explain": "true"}).json()
    assert without["explanation"]["metadata_used"] is False


def test_some_fields_and_an_unseen_body_site(meta_client, meta_loaded, uploads) -> None:
    classes = meta_loaded.model.classes
    some = _post(meta_client, uploads[2], {"localization": " Back"}).json()
    want = _expected(meta_loaded, uploads[2], {"localization": "back"})
    np.testing.assert_allclose(_probs(some, classes), want, atol=1e-6)
    assert some["metadata"]["used"] == {"localization": "back"}
    assert some["metadata"]["missing"] == ["age", "sex"]
    unseen = _post(meta_client, uploads[2], {"age": "40", "localization": "elbow"})
    assert unseen.status_code == 200, unseen.text
    body = unseen.json()
    want = _expected(meta_loaded, uploads[2], {"age": 40, "localization": "elbow"})
    np.testing.assert_allclose(_probs(body, classes), want, atol=1e-6)
    assert body["metadata"]["unknown"] == ["localization"]
    assert "'elbow' not seen in training" in body["metadata"]["note"]


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"age": "fifty"}, "age must be a number"),
        ({"age": "-3"}, "age must be 0 to 120 years"),
        ({"age": "121", "sex": "male"}, "age must be 0 to 120 years"),
        ({"age": "inf"}, "age must be"),
        ({"sex": "x" * 65}, "sex is longer than 64 characters"),
    ],
)
def test_bad_metadata_is_422_and_the_server_keeps_serving(
    meta_client, uploads, form: dict, words: str
) -> None:
    response = _post(meta_client, uploads[0], form)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]
    good = _post(meta_client, uploads[0], FORM_FULL)
    assert good.status_code == 200, good.text
    assert good.json()["metadata_used"] is True


MIXED = [FULL, None, {"age": 80, "sex": "female"}, None, {"localization": "face"}, FULL]


def test_prepared_batch_mixing_metadata_and_none(meta_loaded, uploads) -> None:
    forms = [None if m is None else {k: str(v) for k, v in m.items()} for m in MIXED]
    prepared = [prepare(meta_loaded, d, Limits(), f) for d, f in zip(uploads, forms, strict=True)]
    got = predict_prepared(meta_loaded, prepared, "none")
    want = meta_loaded.model.predict_batch([p.image for p in prepared], metadata=MIXED)
    classes = meta_loaded.model.classes
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(_probs(g, classes), _probs(w, classes), atol=1e-6)
    light = predict_prepared(meta_loaded, prepared, "light")  # views repeat the metadata rows
    want = meta_loaded.model.predict_batch([p.image for p in prepared], tta="light", metadata=MIXED)
    for g, w in zip(light, want, strict=True):
        np.testing.assert_allclose(_probs(g, classes), _probs(w, classes), atol=1e-6)


def test_concurrent_requests_with_and_without_metadata_share_a_batch(meta_loaded, uploads) -> None:
    settings = ServiceSettings(batching=BatchSettings(max_batch=16, max_wait_ms=200))
    app = create_app(meta_loaded, settings)

    async def post_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            jobs = [
                client.post(
                    "/predict",
                    files={"image": ("x.jpg", data, "image/jpeg")},
                    data=None if m is None else {k: str(v) for k, v in m.items()},
                )
                for data, m in zip(uploads, MIXED, strict=True)
            ]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [200] * len(MIXED)
    assert app.state.batcher.stats.largest_batch > 1
    classes = meta_loaded.model.classes
    for response, data, m in zip(responses, uploads, MIXED, strict=True):
        got = _probs(response.json(), classes)
        np.testing.assert_allclose(got, _expected(meta_loaded, data, m), atol=1e-5)
        assert response.json()["metadata_used"] is (m is not None)


def test_an_image_only_model_ignores_the_fields_and_says_so(plain_loaded, uploads) -> None:
    with TestClient(create_app(plain_loaded)) as client:
        response = _post(client, uploads[3], {**FORM_FULL, "age": "not checked"})
        assert response.status_code == 200, response.text
        body = response.json()
        card = client.get("/model").json()["metadata"]
    expected = _expected(plain_loaded, uploads[3], None)
    np.testing.assert_allclose(_probs(body, plain_loaded.model.classes), expected, atol=1e-6)
    assert body["metadata_used"] is False
    assert body["metadata"]["model_uses_metadata"] is False
    assert body["metadata"]["ignored"] == ["age", "sex", "localization"]
    assert body["metadata"]["note"].startswith("this model does not use patient metadata")
    assert card["uses_metadata"] is False and card["fields"] == [] and card["method"] == "none"


def test_model_card_lists_the_metadata_inputs(meta_client) -> None:
    card = meta_client.get("/model").json()["metadata"]
    assert card["uses_metadata"] is True and card["method"] == "concat"
    fields = {f["name"]: f for f in card["fields"]}
    assert list(fields) == ["age", "sex", "localization"]
    assert fields["age"]["type"] == "number" and fields["age"]["range"] == [0, 120]
    assert fields["age"]["training_mean"] == pytest.approx(ENCODER.age_mean)
    assert fields["sex"]["values"] == list(ENCODER.categories["sex"]) == ["female", "male"]
    assert fields["localization"]["values"] == list(ENCODER.categories["localization"])
    assert "missing" in card["missing"] and "unknown" in card["unknown"]


def test_a_mixed_ensemble_passes_metadata_to_its_metadata_member(store, uploads) -> None:
    base, uri = store
    paths = [str(write_checkpoint(base / f"{m}_e.pt", m)) for m in ("concat", "none")]
    loaded = load_prediction_model(paths, device="cpu", tracking_uri=uri)
    assert loaded.is_ensemble
    with TestClient(create_app(loaded)) as client:
        body = _post(client, uploads[4], FORM_FULL).json()
        card = client.get("/model").json()["metadata"]
    image = Image.open(io.BytesIO(uploads[4]))
    (want,) = loaded.model.predict([image], metadata=[FULL])
    classes = loaded.model.classes
    np.testing.assert_allclose(_probs(body, classes), _probs(want, classes), atol=1e-6)
    assert body["metadata_used"] is True and body["metadata"]["used"]["sex"] == "male"
    assert card["uses_metadata"] is True and card["members_using_metadata"] == 1
    assert card["method"] == ["concat", "none"]


def test_openapi_and_web_page_offer_the_metadata_fields(meta_client) -> None:
    schema = meta_client.get("/openapi.json").json()
    (body_ref,) = [
        c["schema"]["$ref"]
        for c in schema["paths"]["/predict"]["post"]["requestBody"]["content"].values()
    ]
    props = schema["components"]["schemas"][body_ref.rsplit("/", 1)[1]]["properties"]
    assert {"image", "age", "sex", "localization"} <= set(props)
    page = meta_client.get("/").text
    for element in ("metadata-inputs", "age", "sex", "localization", "metadata-note"):
        assert f'id="{element}"' in page
    # Hidden until GET /model says the model uses metadata; the disclaimer stays in the page.
    assert re.search(r'<fieldset id="metadata-inputs"[^>]*\bhidden\b', page)
    assert 'id="disclaimer"' in page
    script = meta_client.get("/static/app.js").text
    assert "setUpMetadata(card.metadata)" in script and "meta.uses_metadata" in script
    assert "form.append(name, value)" in script
    for text in (page, script, (STATIC / "style.css").read_text()):  # offline: nothing remote
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?https?:""", text)
