"""Open or resume an Optuna study in persistent (RDB) storage, and summarise its progress.

A study is identified by its name in its storage. Re-running a sweep loads it
(``load_if_exists``): finished trials are kept, trials whose process died (no heartbeat for the
grace period) are marked FAIL, and only COMPLETE + PRUNED trials count toward ``n_trials``.
Several processes pointing at one storage share the study.

A completed trial whose selected model is degenerate (it predicts one class for nearly every
image) is COMPLETE with the worst possible value (-inf when maximising, +inf when minimising), so
every sampler ranks it below any real trial, and user attrs ``degenerate=True`` and
``degenerate_value`` (its real objective). :func:`best_trial` never returns it.
"""

from __future__ import annotations

import math
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from derm_exp.tracking.mlflow_run import mask_credentials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ATTR_OBJECTIVE = "derm_exp.objective"
ATTR_SEARCH_SPACE = "derm_exp.search_space"
# Trial user attrs: whether the selected model is degenerate, and then its real objective value.
ATTR_DEGENERATE = "degenerate"
ATTR_DEGENERATE_VALUE = "degenerate_value"


class StudyError(ValueError):
    """The study cannot be opened or does not match this sweep's settings."""


def check_study_name(name: str) -> str:
    """Study names become file names (``best_<name>.yaml``) and MLflow tag filters: keep simple."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyError(
            f"hydra.sweeper.study_name={name!r}: use letters, digits, '_', '-' and '.' only "
            "(e.g. hydra.sweeper.study_name=lr_search)"
        )
    return name


def make_storage(
    url: str | None, heartbeat_interval: int | None = 30, grace_period: int | None = None
) -> BaseStorage | None:
    """An RDB storage for ``url`` (``None`` = in memory, not resumable)."""
    if url is None:
        return None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # several processes may share one sqlite file: wait for its lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif not url.startswith("sqlite"):
        # a database server may restart between trials: test pooled connections before use
        engine_kwargs["pool_pre_ping"] = True
    try:
        return _open_rdb(url, engine_kwargs, heartbeat_interval, grace_period)
    except Exception as exc:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise StudyError(
            f"cannot open the Optuna storage {mask_credentials(url)}: {exc}. Set "
            "hydra.sweeper.storage to an SQLAlchemy URL such as sqlite:///$PWD/optuna.db"
            f"{_password_hint(url, exc)}"
        ) from exc


def _open_rdb(
    url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int | None, grace: int | None
) -> RDBStorage:
    """``RDBStorage(url)``; retried when sweepers started together race to create its tables
    (on PostgreSQL the loser gets an IntegrityError / "already exists")."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace,
                )
        except (IntegrityError, ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _password_hint(url: str, exc: Exception) -> str:
    """For a PostgreSQL URL without password: where libpq looks for it (derm_exp.server)."""
    if url.startswith("postgresql") and "password" in str(exc).lower():
        return (
            ". The password comes from the file PGPASSFILE names: for `python -m "
            "derm_exp.server`, export PGPASSFILE=<server folder>/pgpass (the server's `status` "
            "prints it)"
        )
    return ""


def existing_trial_count(storage: BaseStorage | None, name: str) -> int:
    """How many trials (any state) the study already has; 0 if it does not exist yet."""
    if storage is None:
        return 0
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False))


def open_study(
    storage: BaseStorage | None,
    name: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    objective: str,
    search_space: dict[str, Any],
) -> optuna.Study:
    """Create or load the study; refuse to mix objectives, directions or search spaces."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    hint = f"use another hydra.sweeper.study_name for a new study (study {name!r} in storage)"
    if study.direction.name.lower() != direction:
        raise StudyError(
            f"study {name!r} was created to {study.direction.name.lower()} its objective, this "
            f"sweep asks to {direction}: {hint}"
        )
    attrs = study.user_attrs
    if attrs.get(ATTR_OBJECTIVE, objective) != objective:
        raise StudyError(
            f"study {name!r} optimises {attrs[ATTR_OBJECTIVE]!r}, this sweep asks for "
            f"objective={objective!r}: {hint}"
        )
    previous = attrs.get(ATTR_SEARCH_SPACE)
    if previous is not None and previous != search_space:
        changed = sorted(
            k for k in set(previous) | set(search_space) if previous.get(k) != search_space.get(k)
        )
        raise StudyError(
            f"study {name!r} was started with another search space (differs in: "
            f"{', '.join(changed)}); continuing it would mix incomparable trials: {hint}"
        )
    study.set_user_attr(ATTR_OBJECTIVE, objective)
    study.set_user_attr(ATTR_SEARCH_SPACE, search_space)
    return study


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose heartbeat expired (their process died) as FAIL; their numbers."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - still)


def state_counts(study: optuna.Study) -> Counter[str]:
    """Trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def finished_count(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials: what ``n_trials`` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worst_value(direction: str) -> float:
    """The score of a degenerate trial: below every real value in ``direction``."""
    return -math.inf if direction == "maximize" else math.inf


def is_degenerate_trial(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_DEGENERATE))


def degenerate_count(study: optuna.Study) -> int:
    """COMPLETE trials scored as degenerate."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(is_degenerate_trial(t) for t in complete)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial whose model is not degenerate (first of equals), or None.

    Not ``study.best_trial``: that would return a degenerate trial when no other has completed.
    """
    usable = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_degenerate_trial(t) and t.value is not None and not math.isnan(t.value)
    ]
    if not usable:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(usable, key=lambda t: t.value)


def stop_after(n_trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that stops the study once it has ``n_trials`` finished trials (all processes).

    Trials still running in other processes sharing the storage count too (stale ones of dead
    processes are failed first): otherwise each process that sees ``n_trials - 1`` finished
    trials would start one more, and several sweepers together would overshoot ``n_trials``.
    """

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(study)
        taken = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if len(taken) >= n_trials:
            study.stop()

    return callback
