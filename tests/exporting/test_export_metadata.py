"""ONNX export and backend=onnxruntime for metadata-fusion models, in process: the two-input
graph with its embedded encoder, probabilities equal to torch's with metadata (some fields
missing, an unseen value) and without it, the .onnx file alone, FiLM on generated metadata,
mismatched files refused clearly, int8 flagged approximate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from derm_exp.exporting.metadata import FORMAT, METADATA_FORMAT, read_metadata
from derm_exp.exporting.pipeline import export_loaded
from derm_exp.exporting.runtime import OnnxModelError, open_session
from derm_exp.inference.loading import load_classifier
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.inference.sources import peek_checkpoint, resolve_source
from derm_exp.models.checkpoint import load_checkpoint
from tests.conftest import compose_train
from tests.exporting.conftest import copy_run, rewrite_metadata, tiny_loaded
from tests.inference.conftest import TrainedModel

RECORDS = [
    {"age": 55, "sex": "male", "localization": "back"},
    {"age": 70},  # sex and site missing
    {"sex": "female", "localization": "face"},  # age missing
    None,  # nothing known
    {},  # nothing known, too
    {"age": 35, "sex": "male", "localization": "moon"},  # a site training never saw
]


@pytest.fixture
def meta_copy(metadata_model: TrainedModel, tmp_path: Path) -> Path:
    """The trained metadata checkpoint and its splits/ in a fresh folder."""
    return copy_run(metadata_model, tmp_path)


def _export(checkpoint: Path, out: Path, **options):
    source = resolve_source(str(checkpoint))
    loaded = load_classifier(source.checkpoint, "cpu")
    return export_loaded(loaded, source, peek_checkpoint(checkpoint), out, **options)


def _images(metadata_model: TrainedModel, n: int = len(RECORDS)) -> list[Path]:
    return sorted((metadata_model.data_root / "images").glob("*"))[:n]


def test_export_writes_two_inputs_and_the_encoder_verified_with_metadata(
    meta_copy: Path, tmp_path: Path
) -> None:
    result = _export(meta_copy, tmp_path / "m.onnx")
    meta = read_metadata(result.path)
    stored = load_checkpoint(meta_copy)["metadata_encoding"]
    entry = meta["metadata_input"]
    assert meta["format"] == METADATA_FORMAT and meta["model"]["metadata"] == "concat"
    assert entry["name"] == "metadata" and entry["encoding"] == stored
    assert entry["width"] == len(entry["feature_names"]) and "age_missing" in entry["feature_names"]
    check = meta["verification"]
    assert check["passed"] and check["max_abs_prob_diff"] <= 1e-4
    assert "validation images" in check["inputs"] and "split metadata" in check["inputs"]
    assert "withheld" in check["inputs"] and check["n_images"] == 32  # 16 with, 16 without
    session = open_session(result.path, threads=1)
    image, metadata = session.get_inputs()
    assert (image.name, metadata.name) == ("image", "metadata")
    assert isinstance(image.shape[0], str) and isinstance(metadata.shape[0], str)  # dynamic
    assert metadata.shape[1] == entry["width"]


def test_onnxruntime_equals_torch_with_and_without_metadata_from_the_file_alone(
    meta_copy: Path, metadata_model: TrainedModel, tmp_path: Path
) -> None:
    exported = _export(meta_copy, tmp_path / "m.onnx").path
    alone = tmp_path / "elsewhere" / "model.onnx"  # no checkpoint, no sidecar, no split
    alone.parent.mkdir()
    shutil.copy(exported, alone)
    torch_p = SkinLesionPredictor.from_checkpoint(meta_copy, device="cpu")
    ort_p = SkinLesionPredictor.from_ref(str(alone), backend="onnxruntime", backend_threads=1)
    assert ort_p.model is None and ort_p.backend.name == "onnxruntime"
    assert ort_p.metadata_encoder.to_dict() == torch_p.metadata_encoder.to_dict()
    np.testing.assert_array_equal(
        ort_p.encode_metadata(RECORDS, len(RECORDS)), torch_p.encode_metadata(RECORDS, 6)
    )
    images = _images(metadata_model)
    with_meta = ort_p.predict_proba(images, metadata=RECORDS)
    np.testing.assert_allclose(
        with_meta, torch_p.predict_proba(images, metadata=RECORDS), atol=1e-5
    )
    without = ort_p.predict_proba(images)  # metadata=None: torch calls model(x) alone
    np.testing.assert_allclose(without, torch_p.predict_proba(images), atol=1e-5)
    np.testing.assert_allclose(without[3:5], with_meta[3:5], atol=1e-6)  # None, {}: nothing known
    assert np.abs(with_meta[0] - without[0]).max() > 1e-4  # the metadata input is really fed
    for a, b in zip(
        torch_p.predict_batch(images[:3], tta="light", metadata=RECORDS[:3]),
        ort_p.predict_batch(images[:3], tta="light", metadata=RECORDS[:3]),
        strict=True,
    ):
        assert a.keys() == b.keys() and a["predicted_class"] == b["predicted_class"]
        np.testing.assert_allclose(
            list(b["probabilities"].values()), list(a["probabilities"].values()), atol=1e-5
        )
    with pytest.raises(Exception, match="unknown metadata field 'weight'"):
        ort_p.predict(images[0], metadata={"weight": 80})


def test_checkpoint_is_exported_on_the_fly_for_onnxruntime(meta_copy: Path, onnx_cache) -> None:
    ort_p = SkinLesionPredictor.from_checkpoint(meta_copy, backend="onnxruntime")
    assert ort_p.backend.path.parent == onnx_cache
    assert ort_p.backend.metadata["format"] == METADATA_FORMAT
    torch_p = SkinLesionPredictor.from_checkpoint(meta_copy, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8) for _ in range(4)]
    np.testing.assert_allclose(
        ort_p.predict_proba(images, metadata=RECORDS[:4]),
        torch_p.predict_proba(images, metadata=RECORDS[:4]),
        atol=1e-5,
    )


def _film_loaded():
    """A random-init FiLM model (tiny, 32 px) whose FiLM layer is not the identity."""
    import pandas as pd
    from omegaconf import OmegaConf

    from derm_exp.data.metadata_encoding import MetadataEncoder
    from derm_exp.models.classifier import build_model

    loaded = tiny_loaded("simple")
    cfg = compose_train(["model=tiny", "data.image_size=32", "model.metadata=film"]).model
    train = pd.DataFrame(
        {"age": [30, 60, None], "sex": ["male", "female", "male"], "localization": ["back"] * 3}
    )
    encoder = MetadataEncoder.fit(train, ["age", "sex", "localization"])
    torch.manual_seed(0)
    model = build_model(cfg, len(loaded.classes), image_size=32, metadata_encoder=encoder).eval()
    torch.nn.init.normal_(model.fusion.mlp[-1].weight, std=0.5)
    loaded.model, loaded.metadata_encoder = model, encoder
    loaded.config = {"model": OmegaConf.to_container(cfg, resolve=True)}
    return loaded


def test_film_export_verifies_on_generated_metadata_and_matches_torch(tmp_path: Path) -> None:
    loaded = _film_loaded()
    result = export_loaded(loaded, None, {}, tmp_path / "film.onnx")
    check = result.metadata["verification"]
    assert "generated images" in check["inputs"] and "generated metadata" in check["inputs"]
    assert result.metadata["metadata_input"]["method"] == "film"
    torch_p = SkinLesionPredictor(loaded, device="cpu")
    ort_p = SkinLesionPredictor.from_ref(str(result.path), backend="onnxruntime")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8) for _ in range(len(RECORDS))]
    ort_meta = ort_p.predict_proba(images, metadata=RECORDS)
    np.testing.assert_allclose(ort_meta, torch_p.predict_proba(images, metadata=RECORDS), atol=1e-5)
    ort_none = ort_p.predict_proba(images)
    np.testing.assert_allclose(ort_none, torch_p.predict_proba(images), atol=1e-5)
    assert np.abs(ort_meta[0] - ort_none[0]).max() > 1e-4


def test_mismatched_metadata_width_or_inputs_give_clear_errors(tmp_path: Path) -> None:
    loaded = _film_loaded()
    good = export_loaded(loaded, None, {}, tmp_path / "good.onnx").path
    width = read_metadata(good)["metadata_input"]["width"]

    def widen(meta: dict) -> None:  # an encoder with one more body site, its width to match
        meta["metadata_input"]["encoding"]["categories"]["localization"].append("scalp")
        meta["metadata_input"]["width"] += 1

    wide = rewrite_metadata(good, tmp_path / "wide.onnx", widen)
    with pytest.raises(OnnxModelError, match=rf"metadata input is \['batch', {width}\].*says "):
        SkinLesionPredictor.from_ref(str(wide), backend="onnxruntime")
    lying = rewrite_metadata(
        good, tmp_path / "lying.onnx", lambda m: m["metadata_input"].update(width=3)
    )
    with pytest.raises(OnnxModelError, match=f"encoder gives {width} features, but .* width 3"):
        SkinLesionPredictor.from_ref(str(lying), backend="onnxruntime")

    def image_only(meta: dict) -> None:
        meta["format"] = FORMAT
        del meta["metadata_input"]

    dropped = rewrite_metadata(good, tmp_path / "dropped.onnx", image_only)
    with pytest.raises(OnnxModelError, match=r"inputs \['image', 'metadata'\].*image-only model"):
        SkinLesionPredictor.from_ref(str(dropped), backend="onnxruntime")
    newer = rewrite_metadata(
        good, tmp_path / "newer.onnx", lambda m: m.update(format="derm_exp.onnx/9")
    )
    with pytest.raises(OnnxModelError, match="derm_exp.onnx/9.*upgrade derm_exp"):
        SkinLesionPredictor.from_ref(str(newer), backend="onnxruntime")
    ort_p = SkinLesionPredictor.from_ref(str(good), backend="onnxruntime")
    with pytest.raises(OnnxModelError, match=rf"shape \(2, 5\) .* takes \(2, {width}\)"):
        ort_p.backend(torch.zeros(2, 3, 32, 32), torch.zeros(2, 5))
    plain = tiny_loaded("simple")  # an image-only checkpoint's model with this file
    with pytest.raises(OnnxModelError, match="metadata encoding .* differs from the checkpoint"):
        SkinLesionPredictor(plain, device="cpu", backend="onnxruntime", onnx_path=good)


def test_image_only_exports_keep_the_first_format(tmp_path: Path) -> None:
    meta = export_loaded(tiny_loaded("simple"), None, {}, tmp_path / "m.onnx").metadata
    assert meta["format"] == FORMAT == "derm_exp.onnx/1" and "metadata_input" not in meta
    assert meta["model"]["metadata"] == "none"


def test_int8_export_of_a_metadata_model_is_flagged_approximate(
    meta_copy: Path, metadata_model: TrainedModel, tmp_path: Path
) -> None:
    result = _export(meta_copy, tmp_path / "m.int8.onnx", quantize="int8")
    meta = read_metadata(result.path)
    assert meta["precision"] == "int8" and meta["approximate"] is True
    assert (
        meta["quantization"]["method"] == "static" and "metadata" in meta["metadata_input"]["name"]
    )
    assert meta["verification"]["passed"] and meta["verification"]["tolerance"] == 0.25
    ort_p = SkinLesionPredictor.from_ref(str(result.path), backend="onnxruntime")
    torch_p = SkinLesionPredictor.from_checkpoint(meta_copy, device="cpu")
    images = _images(metadata_model)
    out = ort_p.predict_batch(images, metadata=RECORDS)
    assert ort_p.approximate and all(r["approximate"] is True for r in out)
    np.testing.assert_allclose(
        ort_p.predict_proba(images, metadata=RECORDS),
        torch_p.predict_proba(images, metadata=RECORDS),
        atol=0.25,
    )


def test_export_cli_prints_the_metadata_input(meta_copy: Path, tmp_path: Path, capsys) -> None:
    from derm_exp.export import export

    cfg = compose_train(
        [f"model_ref={meta_copy}", "log_to_run=false", f"out={tmp_path / 'cli.onnx'}"],
        config_name="export",
    )
    summary = export(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert summary["verification"].passed and Path(summary["path"]).is_file()
    assert "Metadata     concat fusion: input 'metadata' (N, " in out
    assert "encoded from age, sex, localization by the embedded encoder" in out
