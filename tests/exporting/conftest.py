"""Fixtures of the export tests: tiny networks of both heads, the session's trained model and a
tiny trained metadata-fusion model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from derm_exp.data.metadata import CLASSES
from tests.conftest import compose_train
from tests.inference.conftest import TrainedModel, session_model, train_tiny_model
from tests.tiny import tiny

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install derm_exp[onnx])")


def tiny_loaded(head: str):
    """A random-init 32 px test_efficientnet with ``head`` as a LoadedModel (no checkpoint)."""
    import torch

    from derm_exp.inference.loading import LoadedModel
    from derm_exp.models.classifier import build_model

    torch.manual_seed(0)
    cfg = compose_train(tiny(f"model/head={head}"))
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=32).eval()
    config = {"model": OmegaConf.to_container(cfg.model, resolve=True)}
    return LoadedModel(model, list(CLASSES), dict(model.data_config), 1.7, config, None)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The session's tiny trained model (shared with the inference tests)."""
    return session_model(tmp_path_factory, demo_data)


@pytest.fixture(scope="session")
def metadata_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The session's tiny trained metadata-fusion (concat) model."""
    base = tmp_path_factory.mktemp("tiny_metadata_model")
    return train_tiny_model(base, demo_data, "model.metadata=concat", "evaluation.n_boot=0")


@pytest.fixture
def checkpoint_copy(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """The trained checkpoint and its splits/ copied into a fresh folder (exports land beside)."""
    return copy_run(trained_model, tmp_path)


def copy_run(model: TrainedModel, tmp_path: Path) -> Path:
    """``model``'s checkpoint and its splits/ in a fresh folder ``tmp_path/run``; the copy's
    checkpoint path."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(model.checkpoint, folder / "checkpoint_best.pt")
    shutil.copytree(model.output_dir / "splits", folder / "splits")
    return folder / "checkpoint_best.pt"


def rewrite_metadata(src: Path, dst: Path, change: Callable[[dict], None]) -> Path:
    """Copy the ONNX file ``src`` to ``dst`` with ``change`` applied to its derm_exp metadata."""
    import onnx

    from derm_exp.exporting.metadata import METADATA_KEY

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            change(meta)
            prop.value = json.dumps(meta)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """On-the-fly exports go to a per-test cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DERM_EXP_CACHE_DIR", str(cache))
    return cache / "onnx"
