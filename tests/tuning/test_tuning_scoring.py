"""A degenerate model's trial is scored the worst value and never becomes the best trial."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from derm_exp.tuning import study as st
from derm_exp.tuning.scoring import score_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeRuns:
    """What the trial runs' MLflow tags say: degenerate (True), not (False), unknown (None)."""

    def __init__(self, flags: dict[int, bool | None]) -> None:
        self.flags = flags

    def check_degenerate(self, number: int) -> bool | None:
        return self.flags[number]


class BrokenRuns:
    def check_degenerate(self, number: int) -> bool | None:
        raise ConnectionError("tracking server down")


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_degenerate_trial_is_worst_even_with_the_best_objective(direction: str) -> None:
    # trial 1 has the best raw objective in either direction, but its model is degenerate
    raw = {0: 0.4, 1: 0.9 if direction == "maximize" else 0.1, 2: 0.5}
    runs = FakeRuns({0: False, 1: True, 2: None})
    study = optuna.create_study(direction=direction)
    study.optimize(lambda t: score_trial(t, raw[t.number], "val/x", direction, runs), n_trials=3)
    normal, degenerate, unknown = study.trials
    assert degenerate.value == (-math.inf if direction == "maximize" else math.inf)
    assert degenerate.user_attrs == {"degenerate": True, "degenerate_value": raw[1]}
    assert normal.value == 0.4 and normal.user_attrs == {"degenerate": False}
    assert unknown.value == 0.5 and unknown.user_attrs == {}  # no tag: scored by its objective
    assert st.best_trial(study).number == (2 if direction == "maximize" else 0)
    assert st.degenerate_count(study) == 1


def test_an_unreadable_store_scores_by_the_objective() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    assert score_trial(trial, 0.3, "val/x", "maximize", BrokenRuns()) == 0.3


def test_best_trial_skips_degenerate_trials_whatever_their_value() -> None:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    # e.g. written by another sweeper process: a good-looking value, flagged degenerate
    study.add_trial(
        create_trial(
            value=0.99,
            params={"x": 0.1},
            distributions=dist,
            user_attrs={"degenerate": True, "degenerate_value": 0.99},
        )
    )
    assert st.best_trial(study) is None  # Optuna's own study.best_trial would return it
    study.add_trial(create_trial(value=0.2, params={"x": 0.2}, distributions=dist))
    study.add_trial(create_trial(value=0.2, params={"x": 0.3}, distributions=dist))
    assert st.best_trial(study).number == 1  # first of equals, like Optuna
