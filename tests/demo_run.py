"""The README's ``make demo`` command, run once per test session through the CLI as a user runs it:
``python -m derm_exp.train experiment=demo`` (2 epochs, a small generated demo dataset, a tmp
MLflow store). The demo, explain and evaluate CLI tests read this one run instead of each
training their own; a test that writes to the store (evaluation runs, registrations) works on
:meth:`DemoRun.store_copy` so the others see the run as trained.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.cli import run_module

N_IMAGES = 200  # data.demo.n_images (the README's default: 800); every class in every split


@dataclass(frozen=True)
class DemoRun:
    """The finished demo training run: its folders, store, run id and the CLI's output."""

    root: Path
    uri: str
    run_id: str
    proc: subprocess.CompletedProcess[str]

    @property
    def output_dir(self) -> Path:
        return self.root / "run"

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "checkpoint_best.pt"

    @property
    def images(self) -> list[Path]:
        return sorted((self.root / "demo" / "images").glob("*.jpg"))

    def store_copy(self, folder: Path) -> str:
        """A tracking URI of a copy of the run's sqlite store in ``folder`` (the artifacts stay
        where training wrote them; new runs' artifacts go beside them under new run ids)."""
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root / "mlflow.db", folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"


def train_demo_run(root: Path) -> DemoRun:
    """``python -m derm_exp.train experiment=demo`` into ``root`` (started from ``root``: the
    store and outputs are anchored by the config, not by the working directory)."""
    uri = f"sqlite:///{root}/mlflow.db"
    proc = run_module(
        "derm_exp.train",
        "experiment=demo",
        "trainer.max_epochs=2",
        "evaluation.n_boot=0",
        "data.num_workers=0",
        # so few steps may predict one class: register it anyway (the alias seed-42 is read)
        "registry.allow_degenerate=true",
        f"data.demo.dir={root / 'demo'}",
        f"data.demo.n_images={N_IMAGES}",
        f"tracking.uri={uri}",
        f"tracking.artifact_root={root / 'mlruns'}",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run_id = re.search(r"MLflow run id: ([0-9a-f]{32})", proc.stdout).group(1)
    return DemoRun(root, uri, run_id, proc)
