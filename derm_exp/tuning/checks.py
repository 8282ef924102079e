"""Checks the sweeper runs before any trial: settings, composability, sampler.

Every mistake found here is reported as ``error: ...`` before the storage is touched or a job
trains, so a misconfigured sweep costs seconds, not a first trial.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SweepError(ValueError):
    """The sweep is misconfigured: reported before any trial runs."""


def check_settings(cfg: DictConfig, direction: str, n_trials: int, study_name: str) -> str:
    """Validate objective, direction, n_trials and study name; return the objective."""
    from derm_exp.evaluation.metrics import SCALAR_KEYS
    from derm_exp.tuning.study import check_study_name

    objective = OmegaConf.select(cfg, "objective")
    if not isinstance(objective, str) or not objective.startswith("val/"):
        raise SweepError(
            f"objective={objective!r}: a sweep optimises a validation metric (val/...), "
            "never a test metric, which must stay untouched for the final estimate. Set e.g. "
            "objective=val/balanced_accuracy or objective=val/macro_auc"
        )
    known = sorted({f"val/{k}" for k in SCALAR_KEYS} | {"val/loss"})
    if objective not in known:
        raise SweepError(
            f"objective={objective!r} is not a validation metric the trainer logs; choose "
            f"one of: {', '.join(known)}"
        )
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"hydra.sweeper.direction={direction!r}: choose maximize or minimize")
    lower_is_better = objective.endswith(("loss", "nll", "ece", "brier"))  # the rest: higher
    if lower_is_better != (direction == "minimize"):
        log.warning(
            "objective %s is being %sd: is hydra.sweeper.direction right?", objective, direction
        )
    if n_trials < 1:
        raise SweepError(f"hydra.sweeper.n_trials={n_trials} must be >= 1")
    check_study_name(study_name)
    return objective


def check_composable(config_loader: Any, config: DictConfig, space: Any) -> None:
    """Compose every group option and one value of every parameter before any training."""
    from hydra.errors import HydraException

    from derm_exp.config import config_groups
    from derm_exp.tuning.search_space import SearchSpaceError, format_value

    groups = config_groups()
    fixed = list(space.fixed.values())
    for name, dist in space.distributions.items():
        choices = getattr(dist, "choices", None)
        key = name.lstrip("+")
        values = list(choices) if choices and (key in groups or "/" in key) else None
        values = values or [choices[0] if choices else dist.low]
        for value in values:
            override = f"{name}={format_value(value)}"
            try:
                config_loader.load_sweep_config(config, [*fixed, override])
            except HydraException as exc:
                reason = str(exc).split("\nConfig search path:")[0].strip()
                raise SearchSpaceError(
                    f"search space entry {override} cannot be composed: {reason}"
                ) from exc


def make_sampler(sampler_cfg: DictConfig, existing_trials: int, space: Any) -> Any:
    """The Optuna sampler, its seed offset by the trials a resumed study already has."""
    import warnings

    import optuna
    from hydra.utils import instantiate

    node = OmegaConf.to_container(sampler_cfg, resolve=True)
    assert isinstance(node, dict)
    if node.get("seed") is not None and existing_trials:
        # a resumed study must not replay the proposals its seed produced the first time
        node["seed"] = int(node["seed"]) + existing_trials
    with warnings.catch_warnings():  # e.g. CMA-ES with_margin is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = instantiate(node)
    categorical = space.categorical()
    if isinstance(sampler, optuna.samplers.CmaEsSampler) and categorical:
        raise SweepError(
            "the CMA-ES sampler searches numeric parameters only, but "
            f"{', '.join(categorical)} {'is' if len(categorical) == 1 else 'are'} "
            "categorical: fix them on the command line (e.g. model/head=simple) or use "
            "hydra/sweeper/sampler=tpe"
        )
    return sampler
