"""Structured configs of the sweeper, registered in Hydra's ConfigStore.

``hydra/sweeper=derm_optuna`` selects the sweeper; ``hydra/sweeper/sampler=tpe|random|cmaes`` and
``hydra/sweeper/pruner=median|hyperband|threshold|none`` select Optuna's sampler and pruner (each
node is ``_target_`` + keyword arguments, so any field can be overridden, e.g.
``hydra.sweeper.pruner.n_warmup_steps=3``). Kept import-light: Hydra imports it on every start.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses cannot resolve string annotations then.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

import derm_exp.config  # noqa: F401  (registers the ${project_root:} resolver used below)


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = 42
    n_startup_trials: int = 10
    multivariate: bool | None = None  # None = Optuna's default (multivariate TPE, 1 objective)


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = 42


@dataclass
class CmaEsSamplerConf:
    """CMA-ES searches numeric parameters only (the sweeper refuses categorical ones)."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = 42
    n_startup_trials: int = 1
    sigma0: float | None = None
    # handle int / stepped parameters correctly (CMA-ES with margin)
    with_margin: bool = True


@dataclass
class MedianPrunerConf:
    """Prune when a trial's best value so far is worse than the median of earlier trials."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # completed trials before any pruning
    n_warmup_steps: int = 2  # epochs a trial always runs
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"  # epochs, or auto (= the first trial's epochs)
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    """Prune a trial whose value leaves [lower, upper] (e.g. still at chance level)."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class DermOptunaSweeperConf:
    _target_: str = "hydra_plugins.derm_optuna_sweeper.sweeper.DermOptunaSweeper"
    # sampler/pruner are built by the sweeper (seed offset on resume), not by Hydra
    _recursive_: bool = False
    defaults: list[Any] = field(
        default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}, "_self_"]
    )
    sampler: Any = MISSING
    pruner: Any = MISSING
    # The study: its name in the storage; re-running with the same name and storage resumes it.
    study_name: str = "derm_optuna"
    # SQLAlchemy URL (sqlite:///..., postgresql://...); null = in memory, not resumable.
    storage: str | None = "sqlite:///${project_root:}/optuna.db"
    direction: str = "maximize"  # maximize | minimize the task's `objective` (a val/ metric)
    n_trials: int = 20  # finished (complete + pruned) trials the study should end with
    # Search space in Hydra sweep syntax: interval(), tag(log, interval()), range(), choice().
    params: dict[str, Any] = field(default_factory=dict)
    # Where best_<study_name>.yaml is written (an experiment config dir); null = don't write.
    best_config_dir: str | None = "${project_root:}/conf/experiment"
    # Trials of a dead process are failed after grace_period s without heartbeat (2x interval).
    heartbeat_interval: int | None = 30
    grace_period: int | None = None
    # Stop the sweep after this many failed trials in a row (crashes, not pruning).
    max_consecutive_failures: int = 5
    # Log a parent MLflow run for the study and nest the trial runs under it.
    mlflow_parent_run: bool = True


_STORE = ConfigStore.instance()
_STORE.store(
    group="hydra/sweeper", name="derm_optuna", node=DermOptunaSweeperConf, provider="derm_exp"
)
for _name, _node in {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
}.items():
    _STORE.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="derm_exp")
for _name, _node in {
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
    "none": NopPrunerConf,
}.items():
    _STORE.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="derm_exp")
