"""Per-epoch pruning: report the objective to the Optuna trial, stop unpromising runs early.

The trainer calls :data:`derm_exp.training.hooks.EPOCH_END_HOOKS` after each validation; raising
:class:`~derm_exp.training.hooks.TrialPruned` there ends the run as pruned (MLflow status KILLED,
tag ``derm_exp.pruned=true``). The sweeper installs a hook for jobs in its own process (Hydra's
basic launcher); a job in another process (submitit, joblib) installs its own on the same trial,
through the storage (:mod:`derm_exp.tuning.job_pruning`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import optuna

from derm_exp.training.hooks import EPOCH_END_HOOKS, EpochHook, TrialPruned


class ObjectiveNotLoggedError(KeyError):
    """The objective is not among the metrics the trainer logs each epoch."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PruningHook:
    """An epoch-end hook that reports ``metrics[objective]`` and prunes when Optuna says so."""

    def __init__(self, trial: optuna.Trial, objective: str) -> None:
        self.trial = trial
        self.objective = objective
        self.reports = 0  # the sweeper's hook: stays 0 when the job ran in another process

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.objective not in metrics:
            known = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
            raise ObjectiveNotLoggedError(
                f"objective={self.objective!r} is not a metric the trainer logs each epoch; "
                f"choose one of: {known}"
            )
        value = float(metrics[self.objective])
        if math.isnan(value):
            return  # Optuna ignores NaN reports; nothing to compare against
        self.trial.report(value, epoch)
        self.reports += 1
        if self.trial.should_prune():
            raise TrialPruned(
                f"trial {self.trial.number} pruned after epoch {epoch}: "
                f"{self.objective}={value:.4f}"
            )


@contextlib.contextmanager
def installed(hook: EpochHook) -> Iterator[EpochHook]:
    """Register ``hook`` as an epoch-end hook for the duration of the block."""
    EPOCH_END_HOOKS.append(hook)
    try:
        yield hook
    finally:
        EPOCH_END_HOOKS.remove(hook)
