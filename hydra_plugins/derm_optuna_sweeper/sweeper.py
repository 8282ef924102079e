"""The ``derm_optuna`` Hydra sweeper: one Optuna trial per Hydra job, persistent and resumable.

Per trial: Optuna samples the search space, Hydra's launcher runs the training job with those
overrides, the job's return value (the validation ``objective``) is told to Optuna. With the
in-process basic launcher, a pruning hook reports the objective after every epoch and stops
unpromising trials (status PRUNED; their MLflow run KILLED). The loop is ``Study.optimize``, so
Optuna's heartbeat marks trials of crashed processes FAIL; a stop callback ends the study at
``n_trials`` finished trials, counted across every process sharing the storage.

This module is imported by Hydra's plugin scan on every start: heavy imports stay in methods.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_INTERRUPTED = 130


class SweepError(ValueError):
    """The sweep is misconfigured: reported before any trial runs."""


class SweepAborted(RuntimeError):
    """Too many trials failed in a row: the sweep stops (the study stays resumable)."""


class DermOptunaSweeper(Sweeper):
    """Hydra sweeper driving an Optuna study (see :mod:`hydra_plugins.derm_optuna_sweeper`)."""

    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        params: DictConfig | dict[str, Any] | None,
        best_config_dir: str | None,
        heartbeat_interval: int | None,
        grace_period: int | None,
        max_consecutive_failures: int,
        mlflow_parent_run: bool,
    ) -> None:
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.study_name = study_name
        self.storage_url = storage
        self.direction = str(direction).lower()
        self.n_trials = int(n_trials)
        self.params = _plain(params)
        self.best_config_dir = best_config_dir
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.mlflow_parent_run = bool(mlflow_parent_run)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self._failures_in_a_row = 0
        self._fatal: BaseException | None = None  # ends the study loop (see _stop)
        self._warned_unpruned = False
        self._study_run: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ entry point
    def sweep(self, arguments: list[str]) -> Any:
        """Run the study; user mistakes print ``error: ...`` and exit 2 without a traceback."""
        from derm_exp.tracking.mlflow_run import TrackingError
        from derm_exp.tuning.pruning import ObjectiveNotLoggedError
        from derm_exp.tuning.search_space import SearchSpaceError
        from derm_exp.tuning.study import StudyError

        try:
            return self._sweep(list(arguments))
        except (SweepError, SearchSpaceError, StudyError, ObjectiveNotLoggedError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except (SweepAborted, TrackingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: study {self.study_name!r} is saved; run the same command again "
                "to continue it",
                file=sys.stderr,
            )
            sys.exit(_INTERRUPTED)

    def _sweep(self, arguments: list[str]) -> Any:
        from derm_exp.config import normalize_overrides
        from derm_exp.tuning import study as st
        from derm_exp.tuning.search_space import parse_search_space

        assert self.config is not None and self.hydra_context is not None
        cfg = self.config
        objective = self._check_settings(cfg)
        entries = normalize_overrides([*map(_param_entry, self.params.items()), *arguments])
        space = parse_search_space(entries, config_loader=self.hydra_context.config_loader)
        if not space.distributions:
            raise SweepError(
                "nothing to search: hydra.sweeper.params has no interval()/range()/choice() "
                "entry (select a search space, e.g. hparams_search=optuna)"
            )
        self._check_composable(space)
        self._make_sampler(0, space)  # refuse an unusable sampler before touching the storage
        storage = st.make_storage(self.storage_url, self.heartbeat_interval, self.grace_period)
        sampler = self._make_sampler(st.existing_trial_count(storage, self.study_name), space)
        pruner = _instantiate(self.pruner_cfg)
        study = st.open_study(
            storage, self.study_name, self.direction, sampler, pruner, objective, space.describe()
        )
        dead = st.fail_dead_trials(study)
        self._log_start(study, dead)

        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        if self.mlflow_parent_run:
            self._study_run = self._open_study_run(cfg, objective)
            for number in dead:
                self._study_run.end_dead_trial(number)

        status = "FAILED"
        try:
            if st.finished_count(study) < self.n_trials:
                study.optimize(
                    lambda trial: self._run_trial(trial, space, objective),
                    callbacks=[st.stop_after(self.n_trials), self._after_trial(objective)],
                )
            if self._fatal is not None:
                raise self._fatal
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._finish(study, objective, status)
        return study

    # ------------------------------------------------------------------ checks
    def _check_settings(self, cfg: DictConfig) -> str:
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
        if self.direction not in ("maximize", "minimize"):
            raise SweepError(
                f"hydra.sweeper.direction={self.direction!r}: choose maximize or minimize"
            )
        lower_is_better = objective.endswith(("loss", "nll", "ece", "brier"))  # the rest: higher
        if lower_is_better != (self.direction == "minimize"):
            log.warning(
                "objective %s is being %sd: is hydra.sweeper.direction right?",
                objective,
                self.direction,
            )
        if self.n_trials < 1:
            raise SweepError(f"hydra.sweeper.n_trials={self.n_trials} must be >= 1")
        check_study_name(self.study_name)
        return objective

    def _check_composable(self, space: Any) -> None:
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
                    self.hydra_context.config_loader.load_sweep_config(  # type: ignore[union-attr]
                        self.config, [*fixed, override]
                    )
                except HydraException as exc:
                    reason = str(exc).split("\nConfig search path:")[0].strip()
                    raise SearchSpaceError(
                        f"search space entry {override} cannot be composed: {reason}"
                    ) from exc

    def _make_sampler(self, existing_trials: int, space: Any) -> Any:
        import warnings

        import optuna

        node = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        assert isinstance(node, dict)
        if node.get("seed") is not None and existing_trials:
            # a resumed study must not replay the proposals its seed produced the first time
            node["seed"] = int(node["seed"]) + existing_trials
        with warnings.catch_warnings():  # e.g. CMA-ES with_margin is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = _instantiate(node)
        categorical = space.categorical()
        if isinstance(sampler, optuna.samplers.CmaEsSampler) and categorical:
            raise SweepError(
                "the CMA-ES sampler searches numeric parameters only, but "
                f"{', '.join(categorical)} {'is' if len(categorical) == 1 else 'are'} "
                "categorical: fix them on the command line (e.g. model/head=simple) or use "
                "hydra/sweeper/sampler=tpe"
            )
        return sampler

    # ------------------------------------------------------------------ trials
    def _run_trial(self, trial: Any, space: Any, objective: str) -> float:
        import optuna
        from hydra.core.utils import JobStatus

        from derm_exp.tuning.pruning import ObjectiveNotLoggedError, PruningHook, installed
        from derm_exp.tuning.search_space import format_value

        overrides = space.overrides(space.sample(trial))
        trial.set_user_attr("overrides", overrides)
        job = [
            *overrides,
            f"++tracking.tags.optuna_study={format_value(self.study_name)}",
            f"++tracking.tags.optuna_trial={trial.number}",
        ]
        if not any(o.lstrip("+").startswith("run_name=") for o in overrides):
            job.append(f"run_name={format_value(f'{self.study_name}-trial{trial.number}')}")
        log.info("trial %d: %s", trial.number, " ".join(overrides))
        ret, error, interrupted = None, None, False
        hook = PruningHook(trial, objective)
        with installed(hook):
            try:
                [ret] = self.launcher.launch([job], initial_job_idx=trial.number)
            except SystemExit as exc:  # the job reported a user error (or Ctrl-C) and exited
                interrupted = exc.code == _INTERRUPTED
                error = exc
            except KeyboardInterrupt:
                interrupted = True
            finally:
                self._link_run(trial)
        if interrupted:
            return self._stop(trial, KeyboardInterrupt())
        if ret is not None and ret.status == JobStatus.COMPLETED:
            try:
                value = float(ret.return_value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isnan(value):
                self._failures_in_a_row = 0
                if not hook.reports and not self._warned_unpruned:
                    self._warned_unpruned = True
                    log.warning(
                        "trial %d reported no epoch to the sweeper: %s runs jobs in another "
                        "process, so trials are not pruned",
                        trial.number,
                        type(self.launcher).__name__,
                    )
                return value
            error = ValueError(f"the job returned {ret.return_value!r}, not a number")
        elif ret is not None:
            error = ret._return_value  # the job's exception (JobReturn keeps it here)
        if isinstance(error, _pruned_types()):
            self._failures_in_a_row = 0
            raise optuna.TrialPruned(str(error))
        if isinstance(error, ObjectiveNotLoggedError):
            return self._stop(trial, error)  # a config mistake: every trial would fail the same
        return self._trial_failed(trial, error)

    def _stop(self, trial: Any, error: BaseException) -> float:
        """FAIL this trial (NaN, one log line) and end the study loop; sweep() reports ``error``."""
        self._fatal = error
        trial.study.stop()
        return math.nan

    def _trial_failed(self, trial: Any, error: BaseException | None) -> float:
        """Log why the trial failed; NaN makes Optuna record it as FAIL and go on."""
        self._failures_in_a_row += 1
        if isinstance(error, SystemExit):
            reason = f"the job exited with code {error.code} (its message is printed above)"
        else:
            reason = f"{type(error).__name__}: {error}"
            log.error("trial %d failed", trial.number, exc_info=error)
        if self._failures_in_a_row >= self.max_consecutive_failures:
            aborted = SweepAborted(
                f"{self._failures_in_a_row} trials failed in a row (last: trial "
                f"{trial.number}, {reason}). Fix the cause and run the same command again to "
                f"continue study {self.study_name!r}; hydra.sweeper.max_consecutive_failures "
                "sets the limit"
            )
            return self._stop(trial, aborted)
        log.warning("trial %d failed (%s); the study goes on", trial.number, reason)
        return math.nan

    def _link_run(self, trial: Any) -> None:
        if self._study_run is None:
            return
        try:
            run_id = self._study_run.link_trial(trial.number)
        except Exception as exc:  # tracking is a convenience here: never lose a trial over it
            log.warning("could not link trial %d to the study's MLflow run: %s", trial.number, exc)
            return
        if run_id is not None:
            trial.set_user_attr("mlflow_run_id", run_id)

    def _after_trial(self, objective: str) -> Any:
        from optuna.trial import TrialState

        from derm_exp.tuning.study import best_trial

        def callback(study: Any, frozen: Any) -> None:
            if frozen.state != TrialState.COMPLETE:
                return
            if self._study_run is not None:
                self._study_run.log_trial(frozen.number, objective, frozen.value)
            best = best_trial(study)
            if best is not None and best.number == frozen.number:
                self._record_best(study, best, objective)

        return callback

    # ------------------------------------------------------------------ results
    def _record_best(self, study: Any, best: Any, objective: str) -> Path | None:
        from derm_exp.tuning.best_config import best_experiment_yaml, write_best_config
        from derm_exp.tuning.study import finished_count

        path = None
        if self.best_config_dir is not None:
            path = Path(self.best_config_dir) / f"best_{self.study_name}.yaml"
        text = best_experiment_yaml(best.user_attrs.get("overrides", []), self._header(best, path))
        if path is not None:
            write_best_config(path, text)
        if self._study_run is not None:
            self._study_run.log_best(
                best.number, objective, best.value, best.params, finished_count(study), text
            )
        return path

    def _header(self, best: Any, path: Path | None) -> list[str]:
        from derm_exp.tracking.mlflow_run import mask_credentials

        return [
            f"Best trial {best.number} of Optuna study '{self.study_name}': "
            f"{self.config.objective} = {best.value:.4f} ({self.direction}).",  # type: ignore[union-attr]
            f"Written by the derm_optuna sweeper on {datetime.now():%Y-%m-%d %H:%M} from "
            f"{mask_credentials(str(self.storage_url))}.",
            f"Reproduce: python -m derm_exp.train experiment=best_{self.study_name}"
            f"{_searchpath_hint(path) if path is not None else ''}",
        ]

    def _finish(self, study: Any, objective: str, status: str) -> None:
        from derm_exp.tracking.mlflow_run import mask_credentials
        from derm_exp.tuning.study import best_trial, finished_count, state_counts

        counts = state_counts(study)
        best = best_trial(study)
        path = self._record_best(study, best, objective) if best is not None else None
        if self._study_run is not None:
            self._study_run.end(status)
        storage = mask_credentials(str(self.storage_url))
        lines = [
            f"\nOptuna study '{self.study_name}' ({storage}): {finished_count(study)} of "
            f"n_trials={self.n_trials} finished ({counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned); {counts['FAIL']} failed, "
            f"{counts['RUNNING']} running elsewhere or stale",
        ]
        if best is None:
            lines.append("  no completed trial yet")
        else:
            lines.append(f"  best trial {best.number}: {objective} = {best.value:.4f}")
            lines += [f"    {k} = {v}" for k, v in best.params.items()]
            if path is not None:
                lines.append(f"  best config: {path}")
                lines.append(
                    f"    python -m derm_exp.train experiment=best_{self.study_name}"
                    f"{_searchpath_hint(path)}"
                )
        if self._study_run is not None:
            lines.append(
                f"  MLflow: study run {self._study_run.run_id}; trial runs have tag "
                f"optuna_study='{self.study_name}'"
            )
        if self.storage_url is not None:
            lines.append(f"  dashboard: optuna-dashboard {storage}")
        print("\n".join(lines))

    def _log_start(self, study: Any, failed_now: list[int]) -> None:
        from derm_exp.tuning.study import finished_count, state_counts

        counts = state_counts(study)
        if failed_now:
            log.warning(
                "trials %s were left RUNNING by a process that died: marked FAIL", failed_now
            )
        done = finished_count(study)
        if sum(counts.values()):
            log.info(
                "resuming study '%s': %d finished, %d failed, %d running elsewhere",
                self.study_name,
                done,
                counts["FAIL"],
                counts["RUNNING"],
            )
        if done >= self.n_trials:
            log.info(
                "study '%s' already has %d finished trials (n_trials=%d): nothing to run; "
                "raise hydra.sweeper.n_trials to continue it",
                self.study_name,
                done,
                self.n_trials,
            )
        else:
            log.info(
                "study '%s': %d more trial(s) to reach n_trials=%d",
                self.study_name,
                self.n_trials - done,
                self.n_trials,
            )

    def _open_study_run(self, cfg: DictConfig, objective: str) -> Any:
        from derm_exp.tuning.tracking import StudyRun

        return StudyRun(
            str(cfg.tracking.uri),
            str(cfg.tracking.experiment_name),
            cfg.tracking.artifact_root,
            self.study_name,
            {
                "optuna_storage": str(self.storage_url),
                "objective": objective,
                "direction": self.direction,
                "n_trials": self.n_trials,
                "sampler": self.sampler_cfg.get("_target_", "?"),
                "pruner": self.pruner_cfg.get("_target_", "?"),
                "search_space": json.dumps(self.params),
            },
        )


def _pruned_types() -> tuple[type[BaseException], ...]:
    import optuna

    from derm_exp.training.hooks import TrialPruned

    return (TrialPruned, optuna.TrialPruned)


def _plain(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return dict(params)


def _instantiate(node: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(node)


def _param_entry(item: tuple[str, Any]) -> str:
    """``hydra.sweeper.params`` item -> override text (strings are sweep syntax, as written)."""
    from derm_exp.tuning.search_space import format_value

    key, value = item
    if isinstance(value, str):
        return f"{key}={value}"
    if isinstance(value, list | dict):
        return f"{key}={json.dumps(OmegaConf.to_container(OmegaConf.create(value)))}"
    return f"{key}={format_value(value)}"


def _searchpath_hint(path: Path) -> str:
    from derm_exp.config import CONF_DIR

    if path.parent.resolve() == (CONF_DIR / "experiment").resolve():
        return ""
    return f" 'hydra.searchpath=[file://{path.parent.parent.resolve()}]'"
