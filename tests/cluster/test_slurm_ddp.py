"""A multi-task SLURM job trains one model with DDP (README "Sweeps on a SLURM cluster")::

    python -m derm_exp.train -m experiment=demo seed=1 hydra/launcher=submitit_slurm \\
        hydra.launcher.tasks_per_node=2

(on the 2-CPU test node: one CPU per task, gloo): SLURM starts 2 tasks, submitit exports the
torch.distributed variables, and the 2 ranks train ONE model: one MLflow run tagged with world
size 2, one set of checkpoints and Hydra files in the job's folder (rank 1 wrote none), the
job COMPLETED in SLURM. Settings that cannot run are refused before any job.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hydra_plugins.derm_submitit_launcher.ddp import refusal
from tests.cluster.helpers import sweep_args, train
from tests.cluster.slurm_cluster import SlurmCluster


def test_multi_task_settings_that_cannot_run_are_refused() -> None:
    four = {"tasks_per_node": 4, "nodes": 2}
    assert refusal({**four, "gpus_per_node": 4}, "slurm") is None
    assert refusal({"tasks_per_node": 1, "nodes": 1, "gpus_per_task": 1}, "local") is None
    assert "set gpus_per_node=4 and gpus_per_task=null" in refusal(
        {**four, "gpus_per_node": None, "gpus_per_task": 1}, "slurm"
    )
    assert "set gpus_per_node=4" in refusal({**four, "gpus_per_node": 2}, "slurm")
    assert "submitit_slurm only" in refusal({"tasks_per_node": 2}, "local")


@pytest.mark.slow
def test_two_tasks_per_node_train_one_model_with_ddp(
    slurm: SlurmCluster, cluster_demo_dir: Path, tmp_path: Path
) -> None:
    result = train(
        [
            "-m",
            "experiment=demo",
            "seed=1",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=4",
            *sweep_args(tmp_path, cluster_demo_dir),
            "registry.enabled=false",
        ],
        tmp_path,
        **slurm.env(),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.ddp_world_size"] == "2"
    assert run.data.tags["derm_exp.global_batch_size"] == "32"  # tiny batch 16 per rank x 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2]

    # One job folder, written by rank 0 alone.
    job_dir = tmp_path / "multirun" / "0"
    assert sorted(p.name for p in job_dir.glob("*.pt")) == [
        "checkpoint_best.pt",
        "checkpoint_latest.pt",
    ]
    assert sorted(p.name for p in (job_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir()) == [
        ".submitit",
        "0",
        "multirun.yaml",
    ]

    # one SLURM job (a lone job is no array: its folder is its id) of 2 tasks, a log each
    (folder,) = (p for p in (tmp_path / "multirun" / ".submitit").iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.glob("*_log.out")) == [
        f"{folder.name}_0_log.out",
        f"{folder.name}_1_log.out",
    ]
    # gloo joined from the exported variables; rank 1 logs warnings only (to its own log)
    assert "DDP: rank 0 of 2 (gloo, cpu)" in (folder / f"{folder.name}_0_log.out").read_text()
    assert "DDP: rank 1 of 2" not in (folder / f"{folder.name}_1_log.out").read_text()
    states: list[str] = []
    for _ in range(60):  # a job's result is written a moment before SLURM records its end
        states = subprocess.run(
            ["sacct", "-n", "-X", "-o", "State", "--parsable2", "-j", folder.name],
            env={**os.environ, **slurm.env()}, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if not {"RUNNING", "COMPLETING"} & set(states):
            break
        time.sleep(1)
    assert states == ["COMPLETED"]
