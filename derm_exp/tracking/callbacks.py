"""Hydra callbacks of the training app (``conf/train.yaml``, ``experiment=ensemble_seeds``).

Hydra instantiates them at every start of ``derm_exp.train``, before the task runs, so this
module imports nothing heavy: MLflow (1.5-3 s to import) is loaded only when a multirun starts,
and a wrong ``data.root`` is reported without it.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

from derm_exp.errors import ConfigError
from derm_exp.tracking.http_settings import configure_http


class MultirunCallback(Callback):
    """Hydra callback of the training app (``conf/train.yaml``).

    Every job, wherever it runs: bound MLflow's HTTP timeouts and retries
    (:func:`~derm_exp.tracking.http_settings.configure_http`) before it talks to a tracking
    server. Multiruns, before the jobs: create the MLflow store and experiment once in the
    launching process (parallel launchers such as joblib otherwise race to create a fresh sqlite
    schema: "duplicate column name") and print the group id that tags every job's run.
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        _configure_or_exit(config.tracking)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from derm_exp.tracking.mlflow_run import group_of, setup_experiment

        t = config.tracking
        _configure_or_exit(t)
        setup_experiment(t.uri, t.experiment_name, t.artifact_root)
        group = group_of(config)
        print(f"sweep group: {group}  (filter runs in `mlflow ui` with: tags.group = '{group}')")


class SweepCallback(MultirunCallback):
    """:class:`MultirunCallback` that also prints the command ensembling the sweep's models."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from derm_exp.tracking.mlflow_run import group_of

        print(f"\nEnsemble this sweep: python -m derm_exp.ensemble group={group_of(config)}")


def _configure_or_exit(tracking: Any) -> None:
    """:func:`configure_http`; a bad value is one ``error:`` line (exit 1), not a traceback."""
    try:
        configure_http(tracking)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
