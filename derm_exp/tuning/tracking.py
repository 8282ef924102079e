"""The MLflow side of a study: one parent run, with every trial's run linked under it.

Trial runs carry the tags ``optuna_study`` and ``optuna_trial`` (set through
``++tracking.tags.*`` overrides) and, once linked, ``mlflow.parentRunId``, which nests them under
the study run in the MLflow UI. Filter them with ``tags.optuna_study = '<study>'``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from derm_exp.tracking.mlflow_run import mask_credentials, setup_experiment

KIND_TAG = "derm_exp.kind"
STUDY_KIND = "optuna_study"


class StudyRun:
    """The study's parent run: created on the first sweep, reopened when the study resumes."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        artifact_root: str | None,
        study_name: str,
        description: Mapping[str, Any],
    ) -> None:
        self.study_name = study_name
        self.experiment_id = setup_experiment(tracking_uri, experiment_name, artifact_root)
        self.client = MlflowClient(tracking_uri)
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
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def link_trial(self, number: int) -> str | None:
        """Nest trial ``number``'s run under the study run; its run id (None if it never began)."""
        run = self._search(
            f"tags.optuna_study = '{self.study_name}' and tags.optuna_trial = '{number}'"
        )
        if run is None:
            return None
        self.client.set_tag(run.info.run_id, "mlflow.parentRunId", self.run_id)
        return run.info.run_id

    def end_dead_trial(self, number: int) -> None:
        """A trial whose process died leaves its run RUNNING: mark it FAILED."""
        run = self._search(
            f"tags.optuna_study = '{self.study_name}' and tags.optuna_trial = '{number}'"
        )
        if run is not None and run.info.status == "RUNNING":
            self.client.set_tag(run.info.run_id, "mlflow.parentRunId", self.run_id)
            self.client.set_terminated(run.info.run_id, status="FAILED")

    def log_trial(self, number: int, objective: str, value: float) -> None:
        """The objective of a completed trial, as a history on the parent run (step = trial)."""
        self.client.log_metric(self.run_id, f"trials/{objective}", value, step=number)

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
        for key, tag in tags.items():
            self.client.set_tag(self.run_id, key, str(tag))
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

    def _search(self, filter_string: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=filter_string,
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None
