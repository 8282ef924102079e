"""Optuna studies shared by several sweeper processes: they stop together at ``n_trials``, and
a PostgreSQL storage without its password says where the password comes from."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from derm_exp.tuning.study import StudyError, make_storage, stop_after


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_sweepers_sharing_a_study_count_each_others_running_trials(tmp_path) -> None:
    """n_trials=3, 1 trial finished and 1 running in another process: this process runs one
    trial and stops (counting finished trials only, it would start a fourth)."""
    study = optuna.create_study(
        storage=make_storage(f"sqlite:///{tmp_path}/optuna.db"), study_name="shared"
    )
    study.tell(study.ask(), 0.1)
    elsewhere = study.ask()  # RUNNING, in "another process"

    def run_here() -> int:
        before = len(study.trials)
        study.optimize(lambda trial: 0.5, n_trials=5, callbacks=[stop_after(3)])
        return len(study.trials) - before

    assert run_here() == 1
    study.tell(elsewhere, state=TrialState.FAIL)  # it failed: this process makes up for it
    assert run_here() == 1
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


@pytest.mark.slow
def test_a_postgres_storage_without_its_password_says_where_it_comes_from(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    with pytest.raises(StudyError, match="no password supplied") as err:
        make_storage(server.optuna_url())
    assert "export PGPASSFILE=<server folder>/pgpass" in str(err.value)
    monkeypatch.setenv("PGPASSFILE", str(server.pgpass))
    assert make_storage(server.optuna_url()) is not None


def test_sweepers_racing_to_create_the_tables_both_open_the_storage(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fresh PostgreSQL database the process that loses the race for Optuna's tables gets
    an IntegrityError (seen here with two processes); it retries and finds the tables."""
    from sqlalchemy.exc import IntegrityError

    from derm_exp.tuning import study as st

    real, calls = st.RDBStorage, []

    def lose_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "RDBStorage", lose_once)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    assert make_storage(f"sqlite:///{tmp_path}/optuna.db") is not None
    assert len(calls) == 2
