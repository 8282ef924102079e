"""End-to-end tiny training runs: MLflow contents, checkpoints, resume into the same run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training.trainer import fit


def _client(cfg: DictConfig) -> MlflowClient:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return MlflowClient()


def _only_run(cfg: DictConfig):
    client = _client(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _artifacts(client: MlflowClient, run_id: str, path: str) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, path)}


def test_tiny_run_logs_everything(tiny_cfg: DictConfig, tmp_path: Path) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.model.head = {
            "_target_": "derm_exp.models.heads.acrnn.ACRNNHead",
            "conv_channels": 16,
            "kernel_size": 3,
            "hidden_size": 8,
            "num_layers": 1,
            "bidirectional": True,
            "attention_dim": 8,
            "dropout": 0.1,
        }
    value = fit(tiny_cfg, tmp_path / "out")
    client, run = _only_run(tiny_cfg)
    assert run.info.status == "FINISHED"
    assert 0.0 <= value <= 1.0
    assert run.data.params["model.name"] == "test_efficientnet"
    assert run.data.params["trainer.max_epochs"] == "2"
    for key in (
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "val/balanced_accuracy",
        "val/macro_f1",
        "val/macro_auc",
        "lr",
    ):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    assert "test/balanced_accuracy" in run.data.metrics
    assert "test/ece_calibrated" in run.data.metrics
    # Option names, derived from the config where Hydra is not running (fit called directly).
    assert run.data.tags["head"] == "acrnn" and run.data.tags["head_class"] == "ACRNNHead"
    assert run.data.tags["loss"] == "cross_entropy" and run.data.tags["model"] == "tiny"
    assert run.data.params["choice.model/head"] == "acrnn"
    assert run.data.params["loss.name"] == "cross_entropy"
    assert run.info.run_name == "test_efficientnet-acrnn-cross_entropy-s42"
    plots = _artifacts(client, run.info.run_id, "plots")
    assert {
        "training_curves.png",
        "confusion_matrix.png",
        "roc_curves.png",
        "calibration.png",
        "per_class.png",
    } <= plots
    assert {"train.csv", "val.csv", "test.csv"} <= _artifacts(client, run.info.run_id, "splits")
    assert {"checkpoint_best.pt", "checkpoint_latest.pt"} <= _artifacts(
        client, run.info.run_id, "checkpoints"
    )
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="checkpoints/checkpoint_best.pt"
    )
    ck = load_checkpoint(local)
    assert ck["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert ck["config"]["model"]["name"] == "test_efficientnet"
    assert ck["temperature"] > 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_resume_continues_the_same_run(tiny_cfg: DictConfig, tmp_path: Path) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
    fit(tiny_cfg, tmp_path / "first")
    client, run = _only_run(tiny_cfg)
    latest = tmp_path / "first" / "checkpoint_latest.pt"
    with open_dict(tiny_cfg):
        tiny_cfg.resume = run.info.run_id
        tiny_cfg.trainer.max_epochs = 3
    fit(
        tiny_cfg,
        tmp_path / "second",
        overrides=[f"resume={run.info.run_id}", "trainer.max_epochs=3"],
    )
    client, resumed = _only_run(tiny_cfg)
    assert resumed.info.run_id == run.info.run_id
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == [1, 2, 3]
    assert load_checkpoint(tmp_path / "second" / "checkpoint_latest.pt")["epoch"] == 2
    assert latest.is_file()


def test_resume_refuses_another_model(tiny_cfg: DictConfig, tmp_path: Path) -> None:
    from derm_exp.training.resume import ResumeError

    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
    fit(tiny_cfg, tmp_path / "first")
    with open_dict(tiny_cfg):
        tiny_cfg.resume = str(tmp_path / "first" / "checkpoint_latest.pt")
        tiny_cfg.model.name = "tf_efficientnetv2_b0"
    with pytest.raises(ResumeError, match="model.name"):
        fit(
            tiny_cfg, tmp_path / "second", overrides=["resume=x", "model.name=tf_efficientnetv2_b0"]
        )
