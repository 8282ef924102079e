"""What every Hydra launcher of the training app relies on (README "How to extend"): before any
job starts, the multirun callback of conf/train.yaml creates the MLflow store and experiment
once, in the launching process, and prints the group id that tags every job's run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from derm_exp.config import CONF_DIR
from derm_exp.tracking.callbacks import MultirunCallback
from derm_exp.tracking.mlflow_run import sweep_group


def test_the_callback_creates_the_store_once_and_prints_the_group(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"tracking.uri={uri}",
                f"tracking.artifact_root={tmp_path / 'mlruns'}",
                f"hydra.sweep.dir={sweep_dir}",
            ],
            return_hydra_config=True,
        )
    callback = instantiate(cfg.hydra.callbacks.mlflow_store)
    assert isinstance(callback, MultirunCallback)
    assert not (tmp_path / "mlflow.db").exists()

    callback.on_multirun_start(cfg)
    experiment = MlflowClient(uri).get_experiment_by_name(cfg.tracking.experiment_name)
    assert experiment is not None
    assert experiment.artifact_location.startswith((tmp_path / "mlruns").as_uri())
    assert "sweep group: 2026-01-02/03-04-05" in capsys.readouterr().out
    assert sweep_group(sweep_dir) == "2026-01-02/03-04-05"  # the tag the trainer sets

    callback.on_multirun_start(cfg)  # a second start reuses the store and the experiment
    again = MlflowClient(uri).get_experiment_by_name(cfg.tracking.experiment_name)
    assert again.experiment_id == experiment.experiment_id
