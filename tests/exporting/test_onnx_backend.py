"""The onnxruntime backend of the predictor, in process: round trips for both heads (TTA too),
int8 predictions flagged approximate, broken or mismatched files, a missing onnxruntime, the
on-the-fly export of a checkpoint into the cache."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from derm_exp.exporting.metadata import read_metadata, sidecar_path
from derm_exp.exporting.pipeline import export_loaded
from derm_exp.exporting.runtime import OnnxModelError, OnnxUnavailableError
from derm_exp.inference.predictor import SkinLesionPredictor
from tests.exporting.conftest import rewrite_metadata, tiny_loaded


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8) for _ in range(n)]


def _pair(loaded, path: Path, **ort) -> tuple[SkinLesionPredictor, SkinLesionPredictor]:
    torch_p = SkinLesionPredictor(loaded, device="cpu")
    ort_p = SkinLesionPredictor(loaded, device="cpu", backend="onnxruntime", onnx_path=path, **ort)
    return torch_p, ort_p


@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_round_trip_matches_torch_for_both_heads(head: str, tmp_path: Path) -> None:
    loaded = tiny_loaded(head)
    result = export_loaded(loaded, None, {"abstention": {"threshold": 0.4}}, tmp_path / "m.onnx")
    meta = read_metadata(result.path)
    assert meta["classes"] == loaded.classes and meta["temperature"] == pytest.approx(1.7)
    assert meta["data_config"]["input_size"] == [3, 32, 32]
    assert meta["abstention"] == {"threshold": 0.4} and meta["precision"] == "fp32"
    assert meta["model"]["head"] in ("SimpleHead", "ACRNNHead")
    assert meta["verification"]["passed"] and "generated images" in meta["verification"]["inputs"]
    assert json.loads(sidecar_path(result.path).read_text()) == meta
    torch_p, ort_p = _pair(loaded, result.path, backend_threads=1)
    assert ort_p.backend.threads == 1 and ort_p.model is None and not ort_p.approximate
    images = _images()
    np.testing.assert_allclose(
        ort_p.predict_proba(images), torch_p.predict_proba(images), atol=1e-5
    )
    for tta in (None, "medium"):  # TTA views batched through the same backend
        a = torch_p.predict_batch(images, tta=tta)
        b = ort_p.predict_batch(images, tta=tta)
        assert [r.keys() for r in a] == [r.keys() for r in b]  # identical in form
        for x, y in zip(a, b, strict=True):
            assert x["predicted_class"] == y["predicted_class"]
            assert x.get("tta") == y.get("tta")
            np.testing.assert_allclose(
                list(y["probabilities"].values()), list(x["probabilities"].values()), atol=1e-5
            )


def test_int8_export_runs_and_is_flagged_approximate(tmp_path: Path) -> None:
    loaded = tiny_loaded("simple")
    result = export_loaded(loaded, None, {}, tmp_path / "m.int8.onnx", quantize="int8")
    meta = read_metadata(result.path)
    assert meta["precision"] == "int8" and meta["approximate"] is True
    assert meta["quantization"]["method"] == "static"
    torch_p, ort_p = _pair(loaded, result.path)
    assert ort_p.approximate
    out = ort_p.predict_batch(_images(2), tta="light")
    assert all(r["approximate"] is True for r in out)
    assert "approximate" not in torch_p.predict(_images(1)[0])
    np.testing.assert_allclose(
        ort_p.predict_proba(_images()), torch_p.predict_proba(_images()), atol=0.25
    )


def test_corrupted_or_mismatched_files_give_clear_errors(tmp_path: Path) -> None:
    loaded = tiny_loaded("simple")
    good = export_loaded(loaded, None, {}, tmp_path / "good.onnx").path
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 50)
    with pytest.raises(OnnxModelError, match="cannot read ONNX model .*garbage.onnx"):
        SkinLesionPredictor.from_ref(str(garbage), backend="onnxruntime")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OnnxModelError, match="truncated.onnx"):
        SkinLesionPredictor.from_ref(str(truncated), backend="onnxruntime")
    five = rewrite_metadata(good, tmp_path / "five.onnx", lambda m: m.update(classes=list("abcde")))
    with pytest.raises(OnnxModelError, match="outputs 7 classes, but its metadata lists 5"):
        SkinLesionPredictor.from_ref(str(five), backend="onnxruntime")
    big = rewrite_metadata(
        good, tmp_path / "big.onnx", lambda m: m["data_config"].update(input_size=[3, 64, 64])
    )
    with pytest.raises(OnnxModelError, match=r"takes input .*metadata says \[3, 64, 64\]"):
        SkinLesionPredictor.from_ref(str(big), backend="onnxruntime")
    plain = tmp_path / "plain.onnx"
    rewrite_metadata(good, plain, lambda m: None)
    import onnx

    bare = onnx.load(str(plain))
    del bare.metadata_props[:]
    onnx.save(bare, str(plain))
    with pytest.raises(OnnxModelError, match="without derm_exp metadata"):
        SkinLesionPredictor.from_ref(str(plain), backend="onnxruntime")
    other = tiny_loaded("simple")
    other.classes = list(reversed(other.classes))
    with pytest.raises(OnnxModelError, match="classes .* differ from the checkpoint's"):
        SkinLesionPredictor(other, device="cpu", backend="onnxruntime", onnx_path=good)
    with pytest.raises(Exception, match="is an ONNX file: use backend=onnxruntime"):
        SkinLesionPredictor.from_ref(str(good))
    with pytest.raises(Exception, match="amp= and compile= apply to backend=torch only"):
        SkinLesionPredictor.from_ref(str(good), backend="onnxruntime", amp="bf16")
    with pytest.raises(Exception, match="backend='tensorrt': choose one of torch, onnxruntime"):
        SkinLesionPredictor.from_ref(str(good), backend="tensorrt")


def test_missing_onnxruntime_gives_install_hint(monkeypatch, trained_model, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(OnnxUnavailableError, match=r"pip install 'derm_exp\[onnx\]'"):
        SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, backend="onnxruntime")
    SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu")  # torch still works


def test_checkpoint_is_exported_once_into_the_cache(
    checkpoint_copy, onnx_cache, trained_model, caplog
) -> None:
    images = sorted((trained_model.data_root / "images").glob("*"))[:4]
    with caplog.at_level(logging.INFO, logger="derm_exp.inference.backends"):
        first = SkinLesionPredictor.from_checkpoint(checkpoint_copy, backend="onnxruntime")
    assert "exporting" in caplog.text and first.backend.path.parent == onnx_cache
    meta = first.backend.metadata
    assert "validation images of the checkpoint's run" in meta["verification"]["inputs"]
    assert meta["source"]["run_id"] and meta["source"]["checkpoint_sha256"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="derm_exp.inference.backends"):
        again = SkinLesionPredictor.from_checkpoint(checkpoint_copy, backend="onnxruntime")
    assert "exporting" not in caplog.text and again.backend.path == first.backend.path
    torch_p = SkinLesionPredictor.from_checkpoint(checkpoint_copy, device="cpu")
    np.testing.assert_allclose(
        again.predict_proba(images), torch_p.predict_proba(images), atol=1e-5
    )


def test_ensemble_and_prediction_model_pass_the_backend(checkpoint_copy, trained_model) -> None:
    from derm_exp.inference.ensemble import EnsemblePredictor
    from derm_exp.inference.members import member_from_checkpoint
    from derm_exp.inference.prediction_model import load_prediction_model

    images = sorted((trained_model.data_root / "images").glob("*"))[:3]
    members = [member_from_checkpoint(checkpoint_copy, f"m{i}") for i in range(2)]
    ort = EnsemblePredictor.from_members(members, device="cpu", backend="onnxruntime")
    assert {p.backend.name for p in ort.predictors} == {"onnxruntime"}
    torch_e = EnsemblePredictor.from_members(members, device="cpu")
    a, b = ort.predict(images, tta="light"), torch_e.predict(images, tta="light")
    assert [r.keys() for r in a] == [r.keys() for r in b]
    np.testing.assert_allclose(ort.predict_proba(images), torch_e.predict_proba(images), atol=1e-5)
    single = load_prediction_model(
        [str(checkpoint_copy)], backend="onnxruntime", backend_threads=1, device="cpu"
    )
    assert single.model.backend.name == "onnxruntime" and single.model.backend.threads == 1
