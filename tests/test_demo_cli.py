"""The `make demo` job, shortened: CLI entrypoint, generated demo data, MLflow run, help text."""

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


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_makefile_demo_runs_the_demo_experiment() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t.*-m derm_exp\.train experiment=demo", makefile, re.M)


@pytest.mark.slow
def test_demo_job_generates_data_and_logs_a_run(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    proc = _train(
        [
            "experiment=demo",
            "trainer.max_epochs=1",
            "evaluation.n_boot=0",
            "data.num_workers=0",
            f"data.demo.dir={tmp_path / 'demo'}",
            "data.demo.n_images=120",
            f"tracking.uri=sqlite:///{db}",
            f"tracking.artifact_root={tmp_path / 'mlruns'}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        cwd=tmp_path,  # the store is anchored by config, not by the working directory
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "demo" / "HAM10000_metadata.csv").is_file()
    run_id = re.search(r"MLflow run id: ([0-9a-f]{32})", proc.stdout).group(1)
    assert "make ui" in proc.stdout
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "test_efficientnet"
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    assert (tmp_path / "out" / "checkpoint_best.pt").is_file()


def test_help_explains_usage_and_disclaimer(tmp_path: Path) -> None:
    proc = _train(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "not a medical device" in proc.stdout.lower()
    assert "model/head: acrnn, simple" in proc.stdout


def test_misspelt_key_is_a_clear_error(tmp_path: Path) -> None:
    proc = _train(["trainer.max_epoch=3"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "max_epochs" in proc.stderr and "Traceback" not in proc.stderr
