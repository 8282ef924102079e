"""Hydra callbacks of the training app's multiruns."""

from __future__ import annotations

from typing import Any

from derm_exp.tracking.mlflow_run import MultirunCallback, group_of


class SweepCallback(MultirunCallback):
    """:class:`MultirunCallback` that also prints the command ensembling the sweep's models."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print(f"\nEnsemble this sweep: python -m derm_exp.ensemble group={group_of(config)}")
