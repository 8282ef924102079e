"""SkinLesionPredictor: inputs of every kind, TTA, sources, and agreement with evaluation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from derm_exp.errors import ModelSourceError, PredictionInputError
from derm_exp.inference import DISCLAIMER, SkinLesionPredictor
from derm_exp.inference.aggregation import VIEW_AGGREGATIONS, aggregate
from derm_exp.inference.sources import resolve_checkpoint
from derm_exp.inference.tta import expand_views, load_tta_preset
from tests.conftest import compose_train
from tests.inference.conftest import TrainedModel

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def predictor(trained_model: TrainedModel) -> SkinLesionPredictor:
    return SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A random, non-symmetric, non-square RGB image."""
    return np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def test_importing_the_package_stays_light() -> None:
    code = "import sys, derm_exp.inference; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_medium_tta_views_are_eight_distinct_images() -> None:
    preset = load_tta_preset("medium")
    x = torch.rand(1, 3, 16, 16)
    views = expand_views(x, preset.views)
    assert views.shape == (8, 3, 16, 16)
    flat = views.reshape(8, -1)
    distinct = {tuple(np.round(v.numpy(), 6)) for v in flat}
    assert len(distinct) == 8


@pytest.mark.parametrize("aggregation", VIEW_AGGREGATIONS)
def test_every_aggregation_is_a_distribution(aggregation: str) -> None:
    probs = torch.softmax(torch.randn(8, 5, 7) * 3, -1)
    out = torch.from_numpy(aggregate(probs.numpy(), aggregation)).float()  # numpy at the edge
    assert torch.allclose(out.sum(-1), torch.ones(5), atol=1e-6)
    assert (out >= 0).all()


def test_predict_returns_the_documented_keys(predictor, tmp_path: Path, rgb) -> None:
    path = tmp_path / "lesion.png"
    Image.fromarray(rgb).save(path)
    r = predictor.predict(path)
    assert set(r) >= {
        "predicted_class",
        "predicted_class_description",
        "confidence",
        "probabilities",
        "uncertainty",
        "disclaimer",
    }
    assert list(r["probabilities"]) == CLASSES
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["predicted_class"] == max(r["probabilities"], key=r["probabilities"].get)
    assert r["confidence"] == max(r["probabilities"].values())
    assert 0.0 <= r["uncertainty"] <= 1.0
    assert r["disclaimer"] == DISCLAIMER
    assert "view_std" not in r


def test_inputs_of_every_kind_give_consistent_probabilities(predictor, tmp_path, rgb) -> None:
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    # Grayscale: file, HxW array, HxWx1 array and the replicated HxWx3 array agree.
    ref = predictor.predict_proba([np.repeat(gray[..., None], 3, -1)])
    for image in (tmp_path / "gray.png", gray, gray[..., None], gray.astype(np.float32) / 255):
        np.testing.assert_allclose(predictor.predict_proba([image]), ref, atol=1e-6)

    # RGBA: transparent pixels are black, as in the training dataset.
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :10] = 0
    rgba = np.dstack([rgb, alpha])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    black = rgb.copy()
    black[:, :10] = 0
    expected = predictor.predict_proba([black])
    np.testing.assert_allclose(
        predictor.predict_proba([tmp_path / "rgba.png"]), expected, atol=1e-6
    )
    np.testing.assert_allclose(predictor.predict_proba([rgba]), expected, atol=1e-6)

    # EXIF orientation 6 (rotate 90 degrees clockwise) is applied, for paths and PIL images.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(rgb).save(tmp_path / "plain.jpg", quality=95)
    upright = np.rot90(np.asarray(Image.open(tmp_path / "plain.jpg")), -1)
    expected = predictor.predict_proba([np.ascontiguousarray(upright)])
    with Image.open(tmp_path / "rotated.jpg") as im:
        from_pil = predictor.predict_proba([im])
    np.testing.assert_allclose(
        predictor.predict_proba([tmp_path / "rotated.jpg"]), expected, atol=1e-6
    )
    np.testing.assert_allclose(from_pil, expected, atol=1e-6)
    assert not np.allclose(predictor.predict_proba([tmp_path / "plain.jpg"]), expected, atol=1e-6)

    # Any size and a float image in [0, 1].
    big = np.random.default_rng(1).integers(0, 256, (300, 17, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        predictor.predict_proba([big.astype(np.float64) / 255]),
        predictor.predict_proba([big]),
        atol=1e-6,
    )


def test_batch_equals_single_predictions(predictor, trained_model: TrainedModel) -> None:
    paths = sorted((trained_model.data_root / "images").glob("*"))[:5]
    batch = predictor.predict_batch(paths, batch_size=2)
    for path, r in zip(paths, batch, strict=True):
        single = predictor.predict(path)
        assert single["predicted_class"] == r["predicted_class"]
        np.testing.assert_allclose(
            list(single["probabilities"].values()), list(r["probabilities"].values()), atol=1e-6
        )
    assert predictor.predict_proba(paths).shape == (5, 7)


@pytest.mark.parametrize("aggregation", VIEW_AGGREGATIONS)
def test_predict_with_tta(predictor, trained_model: TrainedModel, aggregation: str) -> None:
    path = sorted((trained_model.data_root / "images").glob("*"))[0]
    r = predictor.predict_with_tta(path, mode="medium", aggregation=aggregation)
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["tta"]["aggregation"] == aggregation and len(r["tta"]["views"]) == 8
    assert r["view_std"] >= 0.0 and 0.0 <= r["uncertainty"] <= 1.0


def test_bf16_autocast_is_opt_in_and_close_to_fp32(predictor, trained_model) -> None:
    paths = sorted((trained_model.data_root / "images").glob("*"))[:8]
    assert predictor.precision.dtype is None  # default: fp32, the evaluation path's numbers
    fast = SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu", amp="bf16")
    assert fast.precision.dtype == torch.bfloat16
    exact, low = predictor.predict_proba(paths), fast.predict_proba(paths)
    assert not np.array_equal(exact, low)  # autocast really ran in bf16
    np.testing.assert_allclose(low.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(low, exact, atol=0.05)  # bf16 keeps ~3 significant digits
    with pytest.raises(PredictionInputError, match="amp='bf17': choose off, bf16"):
        SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu", amp="bf17")


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile (inductor) needs a C++ compiler on the CPU",
)
def test_compiled_predictor_matches_eager(predictor, trained_model) -> None:
    paths = sorted((trained_model.data_root / "images").glob("*"))[:3]
    fast = SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu", compile=True)
    assert fast.compiled and fast.model is not fast.eager_model
    np.testing.assert_allclose(
        fast.predict_proba(paths, batch_size=3), predictor.predict_proba(paths), atol=1e-4
    )
    assert fast.compiled  # it really ran compiled: no fallback


def test_compile_failure_falls_back_to_eager(predictor, trained_model, monkeypatch, caplog):
    import derm_exp.inference.predictor as module

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(module, "compile_for_inference", lambda model: Broken())
    path = sorted((trained_model.data_root / "images").glob("*"))[0]
    fallback = SkinLesionPredictor.from_checkpoint(
        trained_model.checkpoint, device="cpu", compile=True
    )
    with caplog.at_level("WARNING"):
        probs = fallback.predict_proba([path])
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in caplog.text
    assert not fallback.compiled and fallback.model is fallback.eager_model
    np.testing.assert_allclose(probs, predictor.predict_proba([path]), atol=1e-6)


def test_clear_errors(predictor, trained_model: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(PredictionInputError, match="image not found"):
        predictor.predict(tmp_path / "missing.jpg")
    with pytest.raises(PredictionInputError, match="unknown TTA mode 'huge'.*medium"):
        predictor.predict_with_tta(np.zeros((8, 8, 3), np.uint8), mode="huge")
    with pytest.raises(PredictionInputError, match="expected HxW"):
        predictor.predict(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ModelSourceError, match="checkpoint not found"):
        SkinLesionPredictor.from_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ModelSourceError, match="no MLflow run"):
        SkinLesionPredictor.from_run("0" * 32, tracking_uri=trained_model.tracking_uri)


def test_run_and_registry_sources_load_the_same_model(predictor, trained_model) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    client = MlflowClient()
    name = "predictor-test"
    client.create_registered_model(name)
    run = client.get_run(trained_model.run_id)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/checkpoints", run_id=trained_model.run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)

    image = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    expected = predictor.predict_proba([image])
    by_run = SkinLesionPredictor.from_run(
        trained_model.run_id, trained_model.tracking_uri, device="cpu"
    )
    by_alias = SkinLesionPredictor.from_registry(
        f"models:/{name}@champion", trained_model.tracking_uri, device="cpu"
    )
    assert by_alias.source.run_id == trained_model.run_id
    for other in (by_run, by_alias):
        np.testing.assert_array_equal(other.predict_proba([image]), expected)
    assert resolve_checkpoint(f"models:/{name}/latest", trained_model.tracking_uri).is_file()
    with pytest.raises(ModelSourceError, match="not found in the registry"):
        SkinLesionPredictor.from_registry(f"models:/{name}@nope", trained_model.tracking_uri)


def test_predictor_matches_the_evaluation_path(trained_model: TrainedModel, tmp_path) -> None:
    """Same image, same probabilities: predictor vs ``derm_exp.evaluate`` on the test split."""
    from derm_exp.evaluate import evaluate

    cfg = compose_train(
        [
            f"model_ref={trained_model.checkpoint}",
            "tracking.enabled=false",
            "bootstrap.n_boot=0",
            "data.num_workers=0",
            "device=cpu",
        ],
        config_name="evaluate",
    )
    evaluate(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "predictions.csv")
    split = pd.read_csv(trained_model.output_dir / "splits" / "test.csv")
    paths = split.set_index("image_id").loc[table["image_id"], "path"].tolist()
    for calibrate, prefix in ((False, "prob_"), (True, "prob_calibrated_")):
        pred = SkinLesionPredictor.from_checkpoint(
            trained_model.checkpoint, device="cpu", calibrate=calibrate
        )
        expected = table[[f"{prefix}{c}" for c in CLASSES]].to_numpy()
        np.testing.assert_allclose(pred.predict_proba(paths), expected, atol=1e-6)
