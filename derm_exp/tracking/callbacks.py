"""Hydra callbacks of the training app (``conf/train.yaml``, ``experiment=ensemble_seeds``).

Hydra instantiates them at every start of ``derm_exp.train``, before the task runs, so this
module imports nothing heavy: MLflow (1.5-3 s to import) is loaded only when a multirun starts,
and a wrong ``data.root`` is reported without it.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class MultirunCallback(Callback):
    """Hydra callback for every multirun of the training app (``conf/train.yaml``).

    Before the jobs: create the MLflow store and experiment once in the launching process
    (parallel launchers such as joblib otherwise race to create a fresh sqlite schema: "duplicate
    column name") and print the group id that tags every job's run.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from derm_exp.tracking.mlflow_run import group_of, setup_experiment

        t = config.tracking
        setup_experiment(t.uri, t.experiment_name, t.artifact_root)
        group = group_of(config)
        print(f"sweep group: {group}  (filter runs in `mlflow ui` with: tags.group = '{group}')")


class SweepCallback(MultirunCallback):
    """:class:`MultirunCallback` that also prints the command ensembling the sweep's models."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from derm_exp.tracking.mlflow_run import group_of

        print(f"\nEnsemble this sweep: python -m derm_exp.ensemble group={group_of(config)}")
