"""A job running outside the sweeper's process reports to its trial through the storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from derm_exp.training.hooks import TrialPruned
from derm_exp.tuning.job_pruning import job_pruning_hook
from derm_exp.tuning.pruning import PruningHook, installed

SWEEPER = "hydra_plugins.derm_optuna_sweeper.sweeper.DermOptunaSweeper"


def _job_config(storage: str, trial: int) -> object:
    return OmegaConf.create(
        {
            "objective": "val/balanced_accuracy",
            "tracking": {"tags": {"optuna_study": "s", "optuna_trial": str(trial)}},
            "hydra": {
                "sweeper": {
                    "_target_": SWEEPER,
                    "storage": storage,
                    "study_name": "s",
                    "heartbeat_interval": 30,
                    "grace_period": None,
                    "pruner": {
                        "_target_": "optuna.pruners.MedianPruner",
                        "n_startup_trials": 1,
                        "n_warmup_steps": 0,
                    },
                }
            },
        }
    )


def test_the_job_reports_to_its_trial_and_is_pruned_against_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask()
    done.report(0.9, 1)
    study.tell(done, 0.9)
    running = study.ask()  # what the sweeper holds while the job runs elsewhere
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    hook = job_pruning_hook(_job_config(storage, running.number))
    assert isinstance(hook, PruningHook)
    with pytest.raises(TrialPruned):
        hook(1, {"val/balanced_accuracy": 0.1})
    [frozen] = [t for t in study.get_trials() if t.number == running.number]
    assert frozen.intermediate_values == {1: 0.1}
    assert frozen.user_attrs["slurm_job_id"] == "4242"


def test_no_job_hook_in_the_sweepers_process_or_outside_optuna(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    cfg = _job_config(storage, trial.number)
    with installed(PruningHook(trial, "val/balanced_accuracy")):  # the basic launcher's case
        assert job_pruning_hook(cfg) is None
    plain = OmegaConf.create({"objective": "x", "tracking": {"tags": {}}, "hydra": {}})
    assert job_pruning_hook(plain) is None
