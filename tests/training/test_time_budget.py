"""trainer.max_time_minutes stops training early and the run is still evaluated and logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training.trainer import fit


def test_time_budget_stops_after_one_epoch_and_still_reports(
    tiny_cfg: DictConfig, tmp_path: Path
) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 5
        tiny_cfg.trainer.max_time_minutes = 0.001  # 60 ms: exceeded by the first epoch
        tiny_cfg.registry.enabled = False
    fit(tiny_cfg, tmp_path / "out")

    mlflow.set_tracking_uri(tiny_cfg.tracking.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tiny_cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.stopped_by"] == "time_budget"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1]
    for key in ("test/balanced_accuracy", "test/macro_f1", "test/ece", "test/ece_calibrated"):
        assert key in run.data.metrics, key
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"confusion_matrix.png", "training_curves.png"} <= plots
    checkpoints = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoint_best.pt", "checkpoint_latest.pt"} <= checkpoints
    assert load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")["epoch"] == 0


def test_no_budget_runs_every_epoch(tiny_cfg: DictConfig, tmp_path: Path) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.trainer.max_time_minutes = None
        tiny_cfg.registry.enabled = False
    fit(tiny_cfg, tmp_path / "out")
    mlflow.set_tracking_uri(tiny_cfg.tracking.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tiny_cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    assert "derm_exp.stopped_by" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2]
