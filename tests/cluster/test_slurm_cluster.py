"""The test cluster itself: the node is idle and a batch job runs on it (sbatch, sacct)."""

from __future__ import annotations

import os
import subprocess
import time

from tests.cluster.slurm_cluster import SlurmCluster


def test_a_batch_job_runs_and_sacct_reports_it(slurm: SlurmCluster, tmp_path) -> None:
    env = {**os.environ, **slurm.env()}
    out = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--mem=100", "-o", str(out), "--wrap", "hostname -s"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    state = ""
    for _ in range(60):
        acct = subprocess.run(
            ["sacct", "-n", "-X", "-o", "State", "--parsable2", "-j", job],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        state = acct.stdout.strip()
        if state not in ("", "PENDING", "RUNNING", "COMPLETING"):
            break
        time.sleep(1)
    assert state == "COMPLETED"
    assert out.read_text().strip() == slurm.host
