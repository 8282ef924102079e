"""The MLflow side of a study: one parent run, with every trial's run linked under it.

Trial runs carry the tags ``optuna_study`` and ``optuna_trial`` (set through
``++tracking.tags.*`` overrides) and, once linked, ``mlflow.parentRunId``, which nests them under
the study run in the MLflow UI. Filter them with ``tags.optuna_study = '<study>'``. The sweeper
reads a finished trial's run tags (:meth:`TrialRuns.degenerate`) to learn whether its selected
model is degenerate; this works whichever launcher ran the job, since every job logs to the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

from derm_exp.tracking.callbacks import MultirunCallback
from derm_exp.tracking.mlflow_run import mask_credentials, setup_experiment
from derm_exp.training.hooks import EPOCH_END_HOOKS

KIND_TAG = "derm_exp.kind"
STUDY_KIND = "optuna_study"
# Set by the trainer's final report (derm_exp.training.final_report) on every finished run.
DEGENERATE_TAG = "derm_exp.degenerate_model"
# Set by the sweeper on a completed trial's run: "true" = scored as the worst value.
TRIAL_DEGENERATE_TAG = "optuna_degenerate"


class DeferredMultirunCallback(MultirunCallback):
    """The training multirun callback, run by the sweeper only once it knows trials will run.

    Hydra calls ``on_multirun_start`` before the sweeper opens the study; for a study that is
    already finished, that would create the MLflow store and print a group id that no run ever
    gets. The ``derm_optuna`` sweeper calls :meth:`start` just before its first trial instead.
    In every job it also installs the job-side pruning hook where the job runs outside the
    sweeper's process (Hydra pickles the callbacks into submitit's and joblib's jobs).
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Nothing yet: see :meth:`start`."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """In a job running outside the sweeper's process, report epochs to the trial itself
        (:mod:`derm_exp.tuning.job_pruning`)."""
        from derm_exp.tuning.job_pruning import job_pruning_hook

        super().on_job_start(config, **kwargs)
        self._job_hook = job_pruning_hook(config)
        if self._job_hook is not None:
            EPOCH_END_HOOKS.append(self._job_hook)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        hook = getattr(self, "_job_hook", None)
        if hook is not None and hook in EPOCH_END_HOOKS:
            EPOCH_END_HOOKS.remove(hook)
        self._job_hook = None

    def start(self, config: Any) -> None:
        """Create the MLflow store and experiment, and print the sweep's group id."""
        super().on_multirun_start(config)


class TrialRuns:
    """Find a study's trial runs in the tracking store (by their ``optuna_*`` tags)."""

    def __init__(
        self, tracking_uri: str, experiment_name: str, artifact_root: str | None, study_name: str
    ) -> None:
        self.study_name = study_name
        self.experiment_id = setup_experiment(tracking_uri, experiment_name, artifact_root)
        self.client = MlflowClient(tracking_uri)

    def trial_run(self, number: int) -> Run | None:
        """The latest run of trial ``number`` (None if it never started)."""
        return self._search(
            f"tags.optuna_study = '{self.study_name}' and tags.optuna_trial = '{number}'"
        )

    def check_degenerate(self, number: int) -> bool | None:
        """Whether trial ``number``'s selected model is degenerate, recorded on its run as tag
        ``optuna_degenerate``; None when the run or the trainer's tag is missing."""
        run = self.trial_run(number)
        tag = None if run is None else run.data.tags.get(DEGENERATE_TAG)
        if run is None or tag is None:
            return None
        degenerate = tag == "true"
        self.client.set_tag(run.info.run_id, TRIAL_DEGENERATE_TAG, str(degenerate).lower())
        return degenerate

    def _search(self, filter_string: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=filter_string,
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` on a run that other sweepers of the same study may tag at the same moment.

    ``MlflowClient.set_tag`` is a select-then-insert in MLflow's SQL store: two sweepers setting
    one new key at once made PostgreSQL raise UniqueViolation (tag_pk) through the server.
    ``log_batch`` goes through the store's ``_set_tags``, which retries on exactly that (and it
    splits more than 100 tags into several batches itself).
    """
    client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


class StudyRun(TrialRuns):
    """The study's parent run: created on the first sweep, reopened when the study resumes."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        artifact_root: str | None,
        study_name: str,
        description: Mapping[str, Any],
    ) -> None:
        super().__init__(tracking_uri, experiment_name, artifact_root, study_name)
        found = self._search(
            f"tags.`{KIND_TAG}` = '{STUDY_KIND}' and tags.optuna_study = '{study_name}'"
        )
        tags = {k: mask_credentials(str(v)) for k, v in description.items()}
        if found is not None:
            self.run_id = found.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"optuna-{study_name}",
                tags={KIND_TAG: STUDY_KIND, "optuna_study": study_name},
            )
            self.run_id = run.info.run_id
        set_tags(self.client, self.run_id, tags)

    def link_trial(self, number: int) -> str | None:
        """Nest trial ``number``'s run under the study run; its run id (None if it never began)."""
        run = self.trial_run(number)
        if run is None:
            return None
        set_tags(self.client, run.info.run_id, {"mlflow.parentRunId": self.run_id})
        return run.info.run_id

    def end_dead_trial(self, number: int) -> None:
        """A trial whose process died leaves its run RUNNING: mark it FAILED."""
        run = self.trial_run(number)
        if run is not None and run.info.status == "RUNNING":
            set_tags(self.client, run.info.run_id, {"mlflow.parentRunId": self.run_id})
            self.client.set_terminated(run.info.run_id, status="FAILED")

    def log_trial(self, number: int, objective: str, value: float, degenerate: bool) -> None:
        """A completed trial's objective (its real value, also for a degenerate model) and
        ``trials/degenerate`` (1 = scored as the worst value), as histories (step = trial)."""
        self.client.log_metric(self.run_id, f"trials/{objective}", value, step=number)
        self.client.log_metric(self.run_id, "trials/degenerate", float(degenerate), step=number)

    def log_best(
        self,
        number: int,
        objective: str,
        value: float,
        params: Mapping[str, Any],
        finished: int,
        experiment_yaml: str | None = None,
    ) -> None:
        """Best trial so far: tags ``best.*`` (updatable across resumes), metric and artifacts."""
        tags = {"best.trial": number, "best.value": value}
        tags.update({f"best.{k}": v for k, v in params.items()})
        set_tags(self.client, self.run_id, tags)
        self.client.log_metric(self.run_id, f"best/{objective}", value, step=finished)
        self.client.log_text(
            self.run_id,
            json.dumps({"trial": number, objective: value, "params": dict(params)}, indent=2),
            "optuna/best_params.json",
        )
        if experiment_yaml is not None:
            self.client.log_text(
                self.run_id, experiment_yaml, f"optuna/best_{self.study_name}.yaml"
            )

    def end(self, status: str) -> None:
        """FINISHED, KILLED (interrupted) or FAILED; a resumed sweep reopens the run."""
        self.client.set_terminated(self.run_id, status=status)
