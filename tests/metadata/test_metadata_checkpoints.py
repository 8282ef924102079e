"""Checkpoints and metadata: an image-only checkpoint from before metadata fusion still loads
(and ignores metadata given to it); a metadata model rebuilds its encoder from the checkpoint
alone. (ONNX export of metadata models: tests/exporting/test_export_metadata.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from derm_exp.data.metadata import CLASSES
from derm_exp.data.metadata_encoding import MetadataEncoder
from derm_exp.inference.loading import load_classifier
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.models.checkpoint import checkpoint_meta, save_checkpoint
from derm_exp.models.classifier import build_model
from tests.conftest import compose_train
from tests.tiny import TINY_MODEL

ENCODER = MetadataEncoder.fit(
    pd.DataFrame({"age": [30, 60], "sex": ["male", "female"], "localization": ["back", "face"]}),
    ["age", "sex", "localization"],
)


def write_checkpoint(path: Path, method: str, *, old: bool = False) -> Path:
    """A best checkpoint as the trainer writes it; ``old``: as derm_exp wrote image-only ones
    before metadata fusion (format version 1, no ``model.metadata`` in the config)."""
    cfg = compose_train([*TINY_MODEL, f"model.metadata={method}"])
    encoder = ENCODER if method != "none" else None
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASSES), image_size=32, metadata_encoder=encoder)
    config = OmegaConf.to_container(cfg, resolve=True)
    meta = checkpoint_meta(
        config=config,
        choices={"model": "tiny", "model/metadata": method},
        classes=list(CLASSES),
        data_config=model.data_config,
        data_fingerprint="0123456789abcdef",
        metadata_encoding=encoder.to_dict() if encoder else None,
    )
    ck = {**meta, "kind": "best", "model": model.state_dict(), "weights": "raw", "epoch": 0}
    if old:
        del config["model"]["metadata"]
        ck = {k: v for k, v in ck.items() if k not in ("format", "kind", "choices", "run_id")}
    return save_checkpoint(ck, path)


def image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_an_old_image_only_checkpoint_still_loads_and_ignores_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ck = write_checkpoint(tmp_path / "old.pt", "none", old=True)
    loaded = load_classifier(ck)
    assert loaded.metadata_encoder is None and loaded.model.fusion is None
    predictor = SkinLesionPredictor(loaded, device="cpu")
    img = image(tmp_path / "a.png")
    plain = predictor.predict(img)
    with caplog.at_level(logging.WARNING, logger="derm_exp.inference.predictor"):
        given = predictor.predict(img, metadata={"age": 50, "sex": "male"})
        predictor.predict(img, metadata={"age": 50})
    assert given["probabilities"] == plain["probabilities"]
    assert [r.getMessage() for r in caplog.records] == [
        "this model does not use patient metadata: the metadata is ignored"
    ]


def test_a_metadata_checkpoint_rebuilds_its_encoder_and_uses_metadata(tmp_path: Path) -> None:
    ck = write_checkpoint(tmp_path / "concat.pt", "concat")
    loaded = load_classifier(ck)
    assert loaded.metadata_encoder == ENCODER
    predictor = SkinLesionPredictor(loaded, device="cpu", calibrate=False)
    img = image(tmp_path / "a.png")
    old, young = (
        predictor.predict_proba([img], metadata=[{"age": age, "localization": "face"}])[0]
        for age in (90, 5)
    )
    assert not np.allclose(old, young)
    # No metadata (None, {} or no argument) is "nothing known": one and the same input.
    nothing = predictor.predict_proba([img])[0]
    np.testing.assert_array_equal(predictor.predict_proba([img], metadata=[{}])[0], nothing)
    with pytest.raises(Exception, match="dx_type"):
        predictor.predict(img, metadata={"dx_type": "histo"})
