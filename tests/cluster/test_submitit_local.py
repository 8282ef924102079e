"""``hydra/launcher=submitit_local``: the SLURM launcher's code path without a cluster.

A seed sweep where one job has a bad setting: the other job still trains and registers its
model, and the sweep ends with one ``error:`` line naming the failed job (exit 1), not Hydra's
traceback of the first failure while the other job is abandoned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.helpers import sweep_args, train

pytestmark = pytest.mark.slow


def test_one_failing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    result = train(
        [
            "-m",
            "experiment=demo",
            "seed=1",
            "optimizer.lr=0.01,-1",
            "hydra/launcher=submitit_local",
            *sweep_args(tmp_path, tmp_path / "demo"),
            "registry.allow_degenerate=true",
        ],
        tmp_path,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "error: 1 of 2 jobs failed" in result.stderr
    assert "optimizer.lr=-1 must be > 0" in result.stderr  # the job's own message, relayed
    assert "Traceback" not in result.stderr

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    versions = client.search_model_versions("name = 'derm-classifier'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.01"
    # each job ran as its own submitit process, with its own log folder
    jobs = [p for p in (tmp_path / "multirun" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2


def test_several_tasks_per_job_are_refused_before_any_job(tmp_path: Path) -> None:
    """Multi-task (DDP) jobs run through submitit_slurm only (tests/cluster/test_slurm_ddp.py);
    locally, torchrun does it."""
    result = train(
        [
            "-m",
            "experiment=demo",
            "seed=1",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            *sweep_args(tmp_path, tmp_path / "demo"),
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    refusal = (
        "error: hydra.launcher.tasks_per_node=2 nodes=1: multi-task (DDP) jobs run through "
        "hydra/launcher=submitit_slurm only"
    )
    assert refusal in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "multirun" / ".submitit").exists()
