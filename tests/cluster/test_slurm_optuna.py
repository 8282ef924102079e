"""The README's SLURM Optuna search on the test cluster::

    python -m derm_exp.train -m hparams_search=optuna_smoke experiment=demo \
        hydra/launcher=submitit_slurm

(plus the tiny recipe, 2 epochs, tmp stores, 1 CPU / 2 GB per job). Every trial is a SLURM job
that opens the study from its storage URL (a sqlite file on the shared tmp filesystem here,
PostgreSQL on a real cluster) and reports its epochs itself, so the 1e-12 trials are pruned
from inside their jobs. While it runs, the test ``scancel``s trial 2's job: that trial becomes
FAIL (the job stops at the SIGTERM: submitit would only log it) and the sweep goes on until
n_trials=4 trials have finished.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.cluster.helpers import cli_env, sweep_args
from tests.cluster.slurm_cluster import SlurmCluster
from tests.cluster.test_slurm_seed_sweep import CLUSTER

pytestmark = pytest.mark.slow

CANCELLED_TRIAL = 2


@dataclass
class Sweep:
    tmp: Path
    result: subprocess.CompletedProcess[str]
    cancelled_job: str

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="optuna_smoke", storage=f"sqlite:///{self.tmp}/o.db")


def _cancel_when_running(proc: subprocess.Popen[str], tmp: Path, env: dict) -> str:
    """Wait until trial 2's job has opened the study (its ``slurm_job_id`` attr is set at job
    start, before the model is built), then ``scancel`` it; its job id. Cancelling later, once
    its MLflow run exists, raced the trial's own epoch-1 pruning on a quiet machine."""
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="optuna_smoke", storage=f"sqlite:///{tmp}/o.db")
            trial = {t.number: t for t in study.get_trials(deepcopy=False)}.get(CANCELLED_TRIAL)
        except Exception:  # not created yet, or a write in progress
            continue
        if trial is not None and "slurm_job_id" in trial.user_attrs:
            job = trial.user_attrs["slurm_job_id"]
            subprocess.run(["scancel", job], env=env, check=True)
            return job
    raise AssertionError(f"trial {CANCELLED_TRIAL} never ran in a SLURM job")


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
    env = cli_env(**slurm.env())
    proc = subprocess.Popen(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job = _cancel_when_running(proc, tmp, env)
        out, err = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Sweep(tmp, subprocess.CompletedProcess(args, proc.returncode, out, err), job)


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


def test_a_cancelled_trial_fails_and_the_sweep_goes_on(sweep: Sweep) -> None:
    trials = {t.number: t for t in sweep.study().get_trials()}
    cancelled = trials[CANCELLED_TRIAL]
    assert cancelled.state == TrialState.FAIL
    assert cancelled.user_attrs["slurm_job_id"] == sweep.cancelled_job
    assert max(trials) > CANCELLED_TRIAL  # trials after it ran, up to 4 finished ones
    # the job stopped at the SIGTERM itself (submitit only logs it), not at SLURM's SIGKILL
    # KillWait seconds later, so it could not report epoch 1 and be pruned after its cancel
    assert "the job was stopped (SIGTERM" in sweep.result.stderr + sweep.result.stdout
    client = MlflowClient(f"sqlite:///{sweep.tmp}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("derm_exp").experiment_id],
        f"tags.optuna_study = 'optuna_smoke' and tags.optuna_trial = '{CANCELLED_TRIAL}'",
    )
    # cancelled at job start: its MLflow run may not exist yet; if it does, the sweeper marked
    # it FAILED (never left RUNNING by the killed job)
    assert len(runs) <= 1 and all(run.info.status == "FAILED" for run in runs)
