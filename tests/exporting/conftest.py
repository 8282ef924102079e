"""Fixtures of the export tests: tiny networks of both heads, the session's trained model and a
tiny trained metadata-fusion model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

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


def train_metadata_model(base: Path, data_root: Path) -> TrainedModel:
    """The tiny recipe of :func:`tests.inference.conftest.train_tiny_model` with
    ``model.metadata=concat``: 1 epoch, 32 px, on ``data_root``, tracked in ``base``."""
    from mlflow.tracking import MlflowClient

    from derm_exp.training.trainer import fit

    overrides = ["trainer.max_epochs=1", "tta=none", "registry.enabled=false"]
    cfg = compose_train(tiny(*overrides, "model.metadata=concat", "evaluation.n_boot=0"))
    with open_dict(cfg):
        cfg.data.root = str(data_root)
        cfg.tracking.uri = f"sqlite:///{base}/mlflow.db"
        cfg.tracking.artifact_root = str(base / "mlruns")
        if "cache_dir" in cfg.data:  # keep the decoded-image cache out of the project
            cfg.data.cache_dir = str(base / "image_cache")
    fit(cfg, base / "run")
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("derm_exp").experiment_id])
    run_dir = base / "run"
    return TrainedModel(
        run_dir / "checkpoint_best.pt", run.info.run_id, cfg.tracking.uri, run_dir, data_root
    )


@pytest.fixture(scope="session")
def metadata_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The session's tiny trained metadata-fusion (concat) model."""
    return train_metadata_model(tmp_path_factory.mktemp("tiny_metadata_model"), demo_data)


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
