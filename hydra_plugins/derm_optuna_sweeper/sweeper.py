"""The ``derm_optuna`` Hydra sweeper: one Optuna trial per Hydra job, persistent and resumable.

Per trial: Optuna samples the search space, Hydra's launcher runs the training job with those
overrides, the job's return value (the validation ``objective``) is told to Optuna. A pruning
hook reports the objective after every epoch and stops unpromising trials (status PRUNED; their
MLflow run KILLED): installed here for the in-process basic launcher, and by the job itself when
it runs elsewhere (SLURM, submitit, joblib: :mod:`derm_exp.tuning.job_pruning`, through the
storage). A job that fails, is cancelled or times out is a FAIL trial and the study goes on.
The loop is ``Study.optimize``, so Optuna's heartbeat marks trials of crashed processes FAIL; a
stop callback ends the study at ``n_trials`` finished trials, counted across every process
sharing the storage; a re-run of a study that already has them runs nothing and creates no
sweep folder, group id or MLflow run. A trial whose selected model is degenerate is scored the
worst value (:mod:`derm_exp.tuning.scoring`).

This module is imported by Hydra's plugin scan on every start: heavy imports stay in methods.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_INTERRUPTED = 130


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
        self._study_run: Any = None  # StudyRun (parent run) when mlflow_parent_run
        self._trial_runs: Any = None  # TrialRuns: reads the trial runs' tags

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
        from derm_exp.tuning.checks import SweepError
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
        from hydra.utils import instantiate

        from derm_exp.config import normalize_overrides
        from derm_exp.tuning import study as st
        from derm_exp.tuning.checks import (
            SweepError,
            check_composable,
            check_settings,
            make_sampler,
        )
        from derm_exp.tuning.search_space import param_entry, parse_search_space
        from derm_exp.tuning.summary import log_start

        assert self.config is not None and self.hydra_context is not None
        cfg = self.config
        objective = check_settings(cfg, self.direction, self.n_trials, self.study_name)
        entries = normalize_overrides([*map(param_entry, self.params.items()), *arguments])
        space = parse_search_space(entries, config_loader=self.hydra_context.config_loader)
        if not space.distributions:
            raise SweepError(
                "nothing to search: hydra.sweeper.params has no interval()/range()/choice() "
                "entry (select a search space, e.g. hparams_search=optuna)"
            )
        check_composable(self.hydra_context.config_loader, cfg, space)
        make_sampler(self.sampler_cfg, 0, space)  # refuse a bad sampler before the storage
        storage = st.make_storage(self.storage_url, self.heartbeat_interval, self.grace_period)
        existing = st.existing_trial_count(storage, self.study_name)
        sampler = make_sampler(self.sampler_cfg, existing, space)
        pruner = instantiate(self.pruner_cfg)
        study = st.open_study(
            storage, self.study_name, self.direction, sampler, pruner, objective, space.describe()
        )
        dead = st.fail_dead_trials(study)
        log_start(study, self.study_name, self.n_trials, dead)
        if st.finished_count(study) >= self.n_trials:
            # nothing to run: no sweep folder, group id or MLflow run for an empty multirun
            self._report_finished(study, objective)
            return study

        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        self._start_multirun_callbacks(cfg)
        self._trial_runs = self._open_tracking(cfg, objective)
        if self._study_run is not None:
            for number in dead:
                self._study_run.end_dead_trial(number)

        status = "FAILED"
        try:
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

    # ------------------------------------------------------------------ trials
    def _run_trial(self, trial: Any, space: Any, objective: str) -> float:
        import optuna
        from hydra.core.utils import JobStatus

        from derm_exp.tuning.pruning import ObjectiveNotLoggedError, PruningHook, installed
        from derm_exp.tuning.scoring import score_trial
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
                if not hook.reports and not _reported(trial) and not self._warned_unpruned:
                    self._warned_unpruned = True
                    log.warning(
                        "trial %d reported no epoch: %s runs jobs in another process, which "
                        "reach the study only through a storage (hydra.sweeper.storage), so "
                        "trials are not pruned",
                        trial.number,
                        type(self.launcher).__name__,
                    )
                return score_trial(trial, value, objective, self.direction, self._trial_runs)
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
        if self._study_run is not None:
            # a job killed from outside (scancel, time limit) left its MLflow run RUNNING
            try:
                self._study_run.end_dead_trial(trial.number)
            except Exception as exc:  # tracking is a convenience here: never lose a trial
                log.warning("could not mark trial %d's MLflow run FAILED: %s", trial.number, exc)
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
        """Nest the trial's run under the study run; record its run id on the trial."""
        try:
            if self._study_run is not None:
                run_id = self._study_run.link_trial(trial.number)
            else:
                run = self._trial_runs.trial_run(trial.number)
                run_id = None if run is None else run.info.run_id
        except Exception as exc:  # tracking is a convenience here: never lose a trial over it
            log.warning("could not find trial %d's MLflow run: %s", trial.number, exc)
            return
        if run_id is not None:
            trial.set_user_attr("mlflow_run_id", run_id)

    def _after_trial(self, objective: str) -> Any:
        from optuna.trial import TrialState

        from derm_exp.tuning.study import ATTR_DEGENERATE_VALUE, best_trial, is_degenerate_trial

        def callback(study: Any, frozen: Any) -> None:
            if frozen.state != TrialState.COMPLETE:
                return
            if self._study_run is not None:
                degenerate = is_degenerate_trial(frozen)
                value = frozen.user_attrs.get(ATTR_DEGENERATE_VALUE, frozen.value)
                self._study_run.log_trial(frozen.number, objective, value, degenerate)
            best = best_trial(study)
            if best is not None and best.number == frozen.number:
                self._record_best(study, best, objective)

        return callback

    # ------------------------------------------------------------------ results
    def _best_path(self) -> Path | None:
        if self.best_config_dir is None:
            return None
        return Path(self.best_config_dir) / f"best_{self.study_name}.yaml"

    def _record_best(self, study: Any, best: Any, objective: str) -> Path | None:
        from derm_exp.tuning.best_config import best_experiment_yaml, write_best_config
        from derm_exp.tuning.study import finished_count
        from derm_exp.tuning.summary import best_header

        path = self._best_path()
        header = best_header(
            self.study_name, objective, self.direction, best, self.storage_url, path
        )
        text = best_experiment_yaml(best.user_attrs.get("overrides", []), header)
        if path is not None:
            write_best_config(path, text)
        if self._study_run is not None:
            self._study_run.log_best(
                best.number, objective, best.value, best.params, finished_count(study), text
            )
        return path

    def _finish(self, study: Any, objective: str, status: str) -> None:
        from derm_exp.tracking.mlflow_run import mask_credentials
        from derm_exp.tuning.study import best_trial
        from derm_exp.tuning.summary import best_lines, counts_line

        best = best_trial(study)
        path = self._record_best(study, best, objective) if best is not None else None
        if self._study_run is not None:
            self._study_run.end(status)
        storage = mask_credentials(str(self.storage_url))
        lines = [
            f"\nOptuna study '{self.study_name}' ({storage}): {counts_line(study, self.n_trials)}",
            *best_lines(study, self.study_name, objective, path),
        ]
        if self._study_run is not None:
            lines.append(
                f"  MLflow: study run {self._study_run.run_id}; trial runs have tag "
                f"optuna_study='{self.study_name}'"
            )
        if self.storage_url is not None:
            lines.append(f"  dashboard: optuna-dashboard {storage}")
        print("\n".join(lines))

    def _report_finished(self, study: Any, objective: str) -> None:
        """The study already has ``n_trials`` finished trials: say so, and how to extend it."""
        from derm_exp.tuning.study import best_trial
        from derm_exp.tuning.summary import finished_message

        best = best_trial(study)
        # the experiment file is derived from the study: (re)write it, e.g. if it was deleted
        path = self._record_best(study, best, objective) if best is not None else None
        print(
            finished_message(
                study, self.study_name, self.n_trials, self.storage_url, objective, path
            )
        )

    def _start_multirun_callbacks(self, cfg: DictConfig) -> None:
        """Run the multirun-start callbacks deferred until trials are sure to run."""
        from derm_exp.tuning.tracking import DeferredMultirunCallback

        for callback in getattr(self.hydra_context.callbacks, "callbacks", []):  # type: ignore[union-attr]
            if isinstance(callback, DeferredMultirunCallback):
                callback.start(cfg)

    def _open_tracking(self, cfg: DictConfig, objective: str) -> Any:
        """The study's parent run (``mlflow_parent_run``) or a plain lookup of trial runs."""
        from derm_exp.tuning.tracking import StudyRun, TrialRuns

        t = cfg.tracking
        where = (str(t.uri), str(t.experiment_name), t.artifact_root, self.study_name)
        if not self.mlflow_parent_run:
            return TrialRuns(*where)
        self._study_run = StudyRun(
            *where,
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
        return self._study_run


def _reported(trial: Any) -> bool:
    """Whether the trial has intermediate values in the storage (reported by its job)."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    return bool(frozen.intermediate_values)


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
