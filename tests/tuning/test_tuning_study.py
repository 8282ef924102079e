"""Study storage, resume checks, dead-trial handling and the per-epoch pruning hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from derm_exp.training.hooks import EPOCH_END_HOOKS, TrialPruned
from derm_exp.tuning import study as st
from derm_exp.tuning.pruning import ObjectiveNotLoggedError, PruningHook, installed

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"optimizer.lr": {"name": "FloatDistribution", "attributes": {"low": 1e-5}}}


def _open(storage, direction="maximize", objective="val/balanced_accuracy", space=SPACE):
    return st.open_study(
        storage,
        "s",
        direction,
        optuna.samplers.RandomSampler(0),
        optuna.pruners.NopPruner(),
        objective,
        space,
    )


def test_study_names_must_be_simple() -> None:
    assert st.check_study_name("lr_search-2.b") == "lr_search-2.b"
    for bad in ("", "a b", "x'; drop", "../up"):
        with pytest.raises(st.StudyError, match="study_name"):
            st.check_study_name(bad)


def test_storage_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(st.StudyError, match="cannot open the Optuna storage nope://u:\\*\\*\\*@h"):
        st.make_storage("nope://u:secret@h/db")
    st.make_storage(f"sqlite:///{tmp_path}/deep/er/optuna.db")  # parent folders are created
    assert (tmp_path / "deep" / "er" / "optuna.db").is_file()
    assert st.make_storage(None) is None


def test_resume_refuses_a_different_study_setup(tmp_path: Path) -> None:
    storage = st.make_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=None)
    study = _open(storage)
    study.tell(study.ask(), 0.5)
    assert st.existing_trial_count(storage, "s") == 1
    assert st.existing_trial_count(storage, "other") == 0
    assert _open(storage).user_attrs[st.ATTR_OBJECTIVE] == "val/balanced_accuracy"
    with pytest.raises(st.StudyError, match="created to maximize"):
        _open(storage, direction="minimize")
    with pytest.raises(st.StudyError, match="optimises 'val/balanced_accuracy'"):
        _open(storage, objective="val/macro_auc")
    with pytest.raises(st.StudyError, match=r"differs in: data.sampler, optimizer.lr"):
        _open(storage, space={"optimizer.lr": {}, "data.sampler": {}})


def test_trials_of_a_dead_process_are_failed_and_not_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    # A process that starts a trial (its heartbeat is recorded) and dies without telling Optuna.
    crash = textwrap.dedent(f"""
        import os, time, optuna
        storage = optuna.storages.RDBStorage({url!r}, heartbeat_interval=1, grace_period=1)
        study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
        study.optimize(lambda trial: time.sleep(0.5) or os._exit(9), n_trials=1)
    """)
    assert subprocess.run([sys.executable, "-c", crash], check=False).returncode == 9
    storage = st.make_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name="s", storage=storage)
    assert st.state_counts(study)["RUNNING"] == 1
    time.sleep(2.5)  # let the dead trial's heartbeat expire (grace period 1 s)
    assert st.fail_dead_trials(study) == [0]
    assert st.state_counts(study) == {"FAIL": 1}
    plain = st.make_storage(url, heartbeat_interval=None)  # ask/tell below: no heartbeat
    study = optuna.load_study(study_name="s", storage=plain)
    study.tell(study.ask(), 1.0)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    assert st.finished_count(study) == 2  # COMPLETE + PRUNED; FAIL is not counted
    assert st.best_trial(study).number == 1


def test_pruning_hook_reports_each_epoch_and_prunes() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(0.5))
    trial = study.ask()
    hook = PruningHook(trial, "val/balanced_accuracy")
    hook(1, {"val/balanced_accuracy": 0.9, "val/loss": 1.0})
    with pytest.raises(TrialPruned, match="pruned after epoch 2: val/balanced_accuracy=0.1000"):
        hook(2, {"val/balanced_accuracy": 0.1, "val/loss": 1.0})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.9, 2: 0.1}
    with pytest.raises(ObjectiveNotLoggedError, match="choose one of: val/a, val/loss"):
        PruningHook(trial, "val/typo")(3, {"val/a": 1.0, "val/loss": 1.0, "lr": 0.1})


def test_hook_is_installed_only_inside_the_block() -> None:
    def hook(epoch: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), installed(hook):
        assert hook in EPOCH_END_HOOKS
        EPOCH_END_HOOKS[-1](1, {})
    assert hook not in EPOCH_END_HOOKS
