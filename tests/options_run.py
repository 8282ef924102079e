"""The README's training command with options typed, run once per test session through the CLI:
``python -m derm_exp.train experiment=demo model.head=acrnn loss=label_smoothing`` (2 epochs,
the first head-only), then ``resume=<run id> trainer.max_epochs=3``. The run-identity tests
(tests/tracking/test_run_identity_cli.py) and the checkpoint-format tests
(tests/models/test_checkpoint_cli.py) read these two runs instead of each training their own.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tests.cli import run_module


@dataclass(frozen=True)
class OptionsRun:
    """The first run (output folder ``root/first``) and its resumption (``root/2``)."""

    root: Path
    run_id: str
    first: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]

    @property
    def store(self) -> list[str]:
        """The overrides that point a CLI at these runs' tracking store."""
        return [f"tracking.uri={self.uri}", f"tracking.artifact_root={self.root}/mlruns"]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root}/mlflow.db"

    @property
    def client(self) -> MlflowClient:
        mlflow.set_tracking_uri(self.uri)
        return MlflowClient()


def _train(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    store = [f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_root={root}/mlruns"]
    return run_module("derm_exp.train", *args, "data.num_workers=0", *store)


def train_options_run(root: Path) -> OptionsRun:
    """Train, then resume, the acrnn + label-smoothing demo run into ``root``."""
    first = _train(
        root,
        "experiment=demo",
        "model.head=acrnn",
        "loss=label_smoothing",
        "trainer.max_epochs=2",
        "evaluation.n_boot=0",
        "explain.gallery=false",  # checked on the plain demo run (tests/demo_run.py)
        f"data.demo.dir={root / 'demo'}",
        "data.demo.n_images=120",
        "registry.allow_degenerate=true",  # so few epochs may predict one class: register anyway
        "trainer.freeze_backbone_epochs=1",
        f"hydra.run.dir={root / 'first'}",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = re.search(r"MLflow run id: ([0-9a-f]{32})", first.stdout).group(1)
    # The resuming command selects no options (Hydra's choices are the defaults there).
    resumed = _train(root, f"resume={run_id}", "trainer.max_epochs=3", f"hydra.run.dir={root}/2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return OptionsRun(root, run_id, first, resumed)
