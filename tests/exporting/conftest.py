"""Fixtures of the export tests: tiny networks of both heads, and the session's trained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from derm_exp.data.metadata import CLASSES
from tests.conftest import compose_train
from tests.inference.conftest import TrainedModel, session_model
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


@pytest.fixture
def checkpoint_copy(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """The trained checkpoint and its splits/ copied into a fresh folder (exports land beside)."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(trained_model.checkpoint, folder / "checkpoint_best.pt")
    shutil.copytree(trained_model.output_dir / "splits", folder / "splits")
    return folder / "checkpoint_best.pt"


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """On-the-fly exports go to a per-test cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DERM_EXP_CACHE_DIR", str(cache))
    return cache / "onnx"
