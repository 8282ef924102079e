"""Helpers of the cluster-launcher tests: the README's sweep commands on the demo data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from derm_exp.config import PROJECT_ROOT
from tests.tiny import TINY

N_DEMO_IMAGES = 160  # data.demo.n_images of every run here (the README's default: 800)


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment, the project first on the path (jobs on the node import
    it from there, as the launcher's ``setup`` lines arrange on a cluster)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def sweep_args(tmp: Path, demo_dir: Path) -> list[str]:
    """What every sweep here adds to the README's command: tiny model, 2 epochs, no bootstrap,
    a tmp tracking store and sweep folder."""
    return [
        *TINY,
        "trainer.max_epochs=2",
        "evaluation.n_boot=0",
        f"data.demo.dir={demo_dir}",
        f"data.demo.n_images={N_DEMO_IMAGES}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns",
        f"hydra.sweep.dir={tmp}/multirun",
    ]


def train(
    args: list[str], cwd: Path, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
