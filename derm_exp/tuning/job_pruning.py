"""Pruning from inside a job that runs in another process than the sweeper (SLURM, submitit,
joblib): the job opens the study from its storage URL and reports its epochs itself.

The ``derm_optuna`` sweeper passes the trial number to every job (``tracking.tags.optuna_trial``)
and the job's config holds the sweeper's settings (``hydra.sweeper``: storage, study name,
pruner). When the sweeper's own :class:`~derm_exp.tuning.pruning.PruningHook` is not installed in
this process (the job runs elsewhere), :func:`job_pruning_hook` loads the study with the same
pruner and returns a hook on the same trial: ``trial.report`` writes the intermediate values to
the storage and ``should_prune`` compares them with the other trials there. A pruned job raises
:class:`~derm_exp.training.hooks.TrialPruned`, which Hydra returns to the sweeper as the job's
error, and the sweeper records the trial PRUNED. The trial gets user attrs ``job_host`` and, in a
SLURM job, ``slurm_job_id``.

The job starts no heartbeat: the sweeper's process beats for the trial while it waits for the
job, and turns it FAIL when the job vanishes (cancelled, timed out, node lost). One storage (one
connection pool) per process and URL. An in-memory study (``hydra.sweeper.storage=null``) cannot
be reached from another process: such jobs are not pruned.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import optuna

from derm_exp.training.hooks import EPOCH_END_HOOKS
from derm_exp.tuning.pruning import PruningHook
from derm_exp.tuning.study import make_storage

log = logging.getLogger(__name__)

_STORAGES: dict[str, Any] = {}  # one RDBStorage (one connection pool) per process and URL
ATTR_SLURM_JOB = "slurm_job_id"
ATTR_HOST = "job_host"


def _storage(sweeper: Any) -> Any:
    url = str(sweeper.storage)
    if url not in _STORAGES:
        _STORAGES[url] = make_storage(
            url, sweeper.get("heartbeat_interval"), sweeper.get("grace_period")
        )
    return _STORAGES[url]


def in_sweeper_process() -> bool:
    """The sweeper installed its own hook here: the job runs in the sweeper's process."""
    return any(isinstance(hook, PruningHook) for hook in EPOCH_END_HOOKS)


def job_pruning_hook(config: Any) -> PruningHook | None:
    """A pruning hook for this job's trial, or None (not an Optuna trial, or the sweeper's
    process, or a study in memory)."""
    sweeper = config.hydra.get("sweeper", {})
    number = config.get("tracking", {}).get("tags", {}).get("optuna_trial")
    if "derm_optuna_sweeper" not in str(sweeper.get("_target_", "")) or number is None:
        return None
    if in_sweeper_process():
        return None
    if sweeper.get("storage") is None:
        log.warning("hydra.sweeper.storage is null: a job in another process cannot prune")
        return None
    from hydra.utils import instantiate

    study = optuna.load_study(
        study_name=str(sweeper.study_name),
        storage=_storage(sweeper),
        pruner=instantiate(sweeper.pruner),
        sampler=optuna.samplers.RandomSampler(),  # the job never samples; the sweeper does
    )
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == int(number)]
    trial = optuna.Trial(study, frozen._trial_id)
    trial.set_user_attr(ATTR_HOST, socket.gethostname())
    if os.environ.get("SLURM_JOB_ID"):
        trial.set_user_attr(ATTR_SLURM_JOB, os.environ["SLURM_JOB_ID"])
    log.info("trial %d: this job reports its epochs to study %s", frozen.number, study.study_name)
    return PruningHook(trial, str(config.objective))
