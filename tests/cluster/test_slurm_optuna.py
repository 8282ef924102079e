"""The README's SLURM Optuna search on the test cluster::

    python -m derm_exp.train -m hparams_search=optuna_smoke experiment=demo \
        hydra/launcher=submitit_slurm

(plus the tiny recipe, 2 epochs, tmp stores, 1 CPU / 2 GB per job). Every trial is a SLURM job
that opens the study from its storage URL (a sqlite file on the shared tmp filesystem here,
PostgreSQL on a real cluster) and reports its epochs itself, so the 1e-12 trials are pruned
from inside their jobs, and the sweep ends with n_trials=4 finished trials.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.cluster.helpers import cli_env, sweep_args
from tests.cluster.slurm_cluster import SlurmCluster
from tests.cluster.test_slurm_seed_sweep import CLUSTER

pytestmark = pytest.mark.slow


@dataclass
class Sweep:
    tmp: Path
    result: subprocess.CompletedProcess[str]

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="optuna_smoke", storage=f"sqlite:///{self.tmp}/o.db")


@pytest.fixture(scope="module")
def sweep(
    slurm: SlurmCluster, cluster_demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Sweep:
    tmp = tmp_path_factory.mktemp("slurm_optuna")
    storage = f"sqlite:///{tmp}/o.db"
    args = [
        "-m",
        "hparams_search=optuna_smoke",
        "experiment=demo",
        "hydra/launcher=submitit_slurm",
        *CLUSTER,
        *sweep_args(tmp, cluster_demo_dir),
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.best_config_dir={tmp}/best",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=tmp, env=cli_env(**slurm.env()), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    return Sweep(tmp, result)


def test_trials_are_pruned_from_inside_their_slurm_jobs(sweep: Sweep) -> None:
    result = sweep.result
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    trials = sweep.study().get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state.name) for t in trials]
    for trial in pruned:
        # reported by the job itself (epoch 1 only: then pruned), which ran as a SLURM job
        assert list(trial.intermediate_values) == [1]
        assert trial.user_attrs["slurm_job_id"].isdigit()
        assert trial.params["optimizer.lr"] == 1e-12
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.params["optimizer.lr"] == 0.01 for t in complete)
    assert all(sorted(t.intermediate_values) == [1, 2] for t in complete)
    assert "reported no epoch" not in result.stderr + result.stdout
