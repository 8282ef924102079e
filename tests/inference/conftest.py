"""One tiny model trained per test session (fit(), 32 px, 1 epoch), shared by the inference and
evaluation tests. ``tests/evaluation/test_evaluate_cli.py`` calls :func:`session_model` too; a
marker file under the session's base temp dir keeps it to one training either way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.conftest import compose_train


@dataclass(frozen=True)
class TrainedModel:
    checkpoint: Path
    run_id: str
    tracking_uri: str
    output_dir: Path
    data_root: Path


def train_tiny_model(base: Path, data_root: Path) -> TrainedModel:
    """Train (once per ``base``) a 1-epoch 32 px test_efficientnet on ``data_root``."""
    marker = base / "trained.json"
    if not marker.is_file():
        from derm_exp.training.trainer import fit

        cfg = compose_train(
            [
                "model=tiny",
                "data.image_size=32",
                "data.batch_size=16",
                "data.eval_batch_size=64",
                "data.num_workers=0",
                "trainer.max_epochs=1",
                "trainer.log_every_n_steps=2",
                "device=cpu",
                "tta=none",
                "registry.enabled=false",
            ]
        )
        with open_dict(cfg):
            cfg.data.root = str(data_root)
            cfg.tracking.uri = f"sqlite:///{base}/mlflow.db"
            cfg.tracking.artifact_root = str(base / "mlruns")
            if "cache_dir" in cfg.data:  # keep the decoded-image cache out of the project
                cfg.data.cache_dir = str(base / "image_cache")
        fit(cfg, base / "run")
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(cfg.tracking.uri)
        client = MlflowClient()
        exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
        (run,) = client.search_runs([exp.experiment_id])
        marker.write_text(json.dumps({"run_id": run.info.run_id, "uri": cfg.tracking.uri}))
    info = json.loads(marker.read_text())
    return TrainedModel(
        base / "run" / "checkpoint_best.pt", info["run_id"], info["uri"], base / "run", data_root
    )


def session_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The session's tiny trained model (trained on first use)."""
    base = tmp_path_factory.getbasetemp() / "tiny_trained_model"
    base.mkdir(exist_ok=True)
    return train_tiny_model(base, demo_data)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The session's tiny trained model: checkpoint path, run id, tracking URI."""
    return session_model(tmp_path_factory, demo_data)
