"""The user's path from the issue: ``experiment=demo augment=heavy`` learns nothing (one class for
every image), so it is not registered and says how to force it; ``resume=<id>`` of the finished
run does nothing; ``resume=<id> registry.allow_degenerate=true`` registers it, tagged
degenerate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from derm_exp.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _train(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    store = [f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_root={root}/mlruns"]
    return subprocess.run(
        [sys.executable, "-m", "derm_exp.train", *args, *store],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_degenerate_run_is_not_registered_and_finished_runs_are_not_rerun(tmp_path: Path) -> None:
    first = _train(
        tmp_path,
        "experiment=demo",
        "augment=heavy",
        "trainer.max_epochs=2",
        "evaluation.n_boot=0",
        "data.num_workers=0",
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=120",
        "explain.gallery=false",  # not what this test is about
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = re.search(r"MLflow run id: ([0-9a-f]{32})", first.stdout).group(1)
    assert "DEGENERATE MODEL" in first.stdout + first.stderr
    assert "not registered: degenerate model" in first.stdout
    assert f"resume={run_id} registry.allow_degenerate=true" in first.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    assert client.search_model_versions("name = 'derm-classifier'") == []
    tags = client.get_run(run_id).data.tags
    assert tags["derm_exp.degenerate_model"] == "true"
    assert tags["derm_exp.registry_skipped"] == "degenerate"

    again = _train(tmp_path, f"resume={run_id}", f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Run {run_id} is already finished" in again.stdout and "Nothing to do" in again.stdout
    assert f"resume={run_id} trainer.max_epochs=7" in again.stdout
    assert "registry.allow_degenerate=true" in again.stdout
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]
    assert len(client.get_metric_history(run_id, "test/balanced_accuracy")) == 1
    assert not (tmp_path / "again" / "checkpoint_latest.pt").exists()

    forced = _train(
        tmp_path,
        f"resume={run_id}",
        "registry.allow_degenerate=true",
        f"hydra.run.dir={tmp_path}/f",
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    (version,) = client.search_model_versions("name = 'derm-classifier'")
    assert version.run_id == run_id and version.tags["degenerate"] == "true"
    assert str(client.get_model_version_by_alias("derm-classifier", "seed-42").version) == "1"
    assert "derm_exp.registry_skipped" not in client.get_run(run_id).data.tags
    assert len(client.get_metric_history(run_id, "test/balanced_accuracy")) == 1

    last = _train(
        tmp_path,
        f"resume={run_id}",
        "registry.allow_degenerate=true",
        f"hydra.run.dir={tmp_path}/l",
    )
    assert last.returncode == 0, last.stderr[-3000:]
    assert "registered as derm-classifier version 1. Nothing to do" in last.stdout
    assert len(client.search_model_versions("name = 'derm-classifier'")) == 1
