"""The `make demo` job, shortened: CLI entrypoint, generated demo data, MLflow run, help text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from derm_exp.config import PROJECT_ROOT
from tests.cli import run_module
from tests.demo_run import DemoRun


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_module("derm_exp.train", *args, cwd=cwd)


def test_makefile_demo_runs_the_demo_experiment() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t.*-m derm_exp\.train experiment=demo", makefile, re.M)


@pytest.mark.slow
def test_demo_job_generates_data_and_logs_a_run(demo_run: DemoRun) -> None:
    root = demo_run.root  # the session's demo run, started from root (tests/demo_run.py)
    assert (root / "demo" / "HAM10000_metadata.csv").is_file()
    assert "make ui" in demo_run.proc.stdout
    mlflow.set_tracking_uri(demo_run.uri)
    run = MlflowClient().get_run(demo_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "test_efficientnet"
    assert run.info.artifact_uri.startswith((root / "mlruns").as_uri())
    assert (root / "run" / "checkpoint_best.pt").is_file()


def test_help_explains_usage_and_disclaimer(tmp_path: Path) -> None:
    proc = _train(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "not a medical device" in proc.stdout.lower()
    assert "model/head: acrnn, simple" in proc.stdout


def test_misspelt_key_is_a_clear_error(tmp_path: Path) -> None:
    proc = _train(["trainer.max_epoch=3"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "max_epochs" in proc.stderr and "Traceback" not in proc.stderr
