"""How a completed trial is scored: its objective, unless its selected model is degenerate.

A model that predicts one class for nearly every image (the trainer's ``is_degenerate``: at
least 95 % of the validation images) can still have the best objective, e.g. the lowest
validation loss of an under-trained sweep. Such a trial is told to Optuna as the worst possible
value (-inf when maximising, +inf when minimising): it stays COMPLETE and counts toward
``n_trials``, every sampler ranks it below any real trial, and :func:`~.study.best_trial` never
returns it, so it never reaches ``best_<study>.yaml``. The trial keeps user attrs
``degenerate=True`` and ``degenerate_value`` (its real objective); its MLflow run gets the tag
``optuna_degenerate=true``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from derm_exp.tuning.study import ATTR_DEGENERATE, ATTR_DEGENERATE_VALUE, worst_value

log = logging.getLogger(__name__)


class DegeneracySource(Protocol):
    def check_degenerate(self, number: int) -> bool | None: ...


def score_trial(
    trial: Any, value: float, objective: str, direction: str, runs: DegeneracySource
) -> float:
    """The value to tell Optuna for trial ``trial`` whose job returned ``value``."""
    try:
        degenerate = runs.check_degenerate(trial.number)
    except Exception as exc:  # an unreadable store must not lose a trial that trained
        log.warning("could not read trial %d's MLflow run: %s", trial.number, exc)
        degenerate = None
    if degenerate is None:
        log.warning(
            "trial %d: its MLflow run has no derm_exp.degenerate_model tag, so the sweeper "
            "cannot tell whether its model is degenerate; scored by %s",
            trial.number,
            objective,
        )
        return value
    trial.set_user_attr(ATTR_DEGENERATE, degenerate)
    if not degenerate:
        return value
    trial.set_user_attr(ATTR_DEGENERATE_VALUE, value)
    worst = worst_value(direction)
    log.warning(
        "trial %d: its selected model is degenerate (one class for nearly every validation "
        "image): %s = %.4f is scored as %s, so it never becomes the best trial",
        trial.number,
        objective,
        value,
        worst,
    )
    return worst
