"""The README's SLURM seed sweep on the test cluster::

    python -m derm_exp.train -m experiment=demo seed=1,2 hydra/launcher=submitit_slurm

(plus the tiny recipe, a tmp tracking store and the cluster's 1 CPU / 2 GB per job): two SLURM
jobs train and register two models, tagged with the sweep's group that the launching process
printed, and SLURM recorded both jobs as COMPLETED.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.helpers import sweep_args, train
from tests.cluster.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow

# what a user sets once in conf/hydra/launcher/submitit_slurm.yaml, for the 2-CPU test node
CLUSTER = ("hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2")


def test_seed_sweep_trains_and_registers_one_model_per_slurm_job(
    slurm: SlurmCluster, cluster_demo_dir: Path, tmp_path: Path
) -> None:
    result = train(
        [
            "-m",
            "experiment=demo",
            "seed=1,2",
            "hydra/launcher=submitit_slurm",
            *CLUSTER,
            *sweep_args(tmp_path, cluster_demo_dir),
            # a 2-epoch demo model may be degenerate; this test is about the launcher
            "registry.allow_degenerate=true",
        ],
        tmp_path,
        **slurm.env(),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    group = re.search(r"sweep group: (\S+)", result.stdout).group(1)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    versions = client.search_model_versions("name = 'derm-classifier'")
    runs = [client.get_run(v.run_id) for v in versions]
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and r.data.tags["group"] == group for r in runs)
    model = client.get_registered_model("derm-classifier")
    assert {"seed-1", "seed-2"} <= set(model.aliases)

    # the jobs were one SLURM job array (submitit names folders <array>_<task>), completed there
    tasks = sorted(p.name for p in (tmp_path / "multirun" / ".submitit").glob("[0-9]*_[0-9]*"))
    assert [t.split("_")[1] for t in tasks] == ["0", "1"]
    states: list[str] = []
    for _ in range(60):  # a job's result is written a moment before SLURM records its end
        states = subprocess.run(
            ["sacct", "-n", "-X", "-o", "State", "--parsable2", "-j", tasks[0].split("_")[0]],
            env={**os.environ, **slurm.env()}, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if not {"RUNNING", "COMPLETING"} & set(states):
            break
        time.sleep(1)
    assert states == ["COMPLETED", "COMPLETED"]
