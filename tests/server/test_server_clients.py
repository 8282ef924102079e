"""MLflow clients of a shared server, without one: bounded HTTP retries from the training config,
and an experiment that another process created meanwhile."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

from derm_exp.errors import ConfigError
from derm_exp.tracking import http_settings, mlflow_run
from derm_exp.tracking.callbacks import MultirunCallback
from derm_exp.tracking.http_settings import HTTP_ENV, configure_http
from tests.conftest import compose_train


@pytest.fixture
def http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore MLflow's HTTP variables after the test."""
    for var in HTTP_ENV.values():
        monkeypatch.setenv(var, os.environ.get(var, ""))


def test_the_training_config_bounds_mlflow_http_retries(http_env: None) -> None:
    cfg = compose_train(
        ["tracking.request_timeout_s=7", "tracking.max_retries=0", "tracking.retry_backoff_s=1"]
    )
    MultirunCallback().on_job_start(cfg, task_function=None)  # as Hydra calls it for every job
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 0  # what MLflow reads at every request


def test_defaults_are_far_below_mlflows_minutes_of_retries() -> None:
    cfg = compose_train([])
    assert cfg.tracking.max_retries == http_settings.HTTP_DEFAULTS["max_retries"] < 7
    assert cfg.tracking.request_timeout_s == http_settings.HTTP_DEFAULTS["request_timeout_s"] < 120


@pytest.mark.parametrize("value", [-1, "soon", 1.5])
def test_a_bad_retry_setting_is_a_clear_error(value: object, http_env: None) -> None:
    with pytest.raises(ConfigError, match="tracking.max_retries="):
        configure_http({"max_retries": value})
    cfg = compose_train([f"tracking.max_retries={value}"])
    with pytest.raises(SystemExit) as stop:
        MultirunCallback().on_job_start(cfg, task_function=None)
    assert stop.value.code == 1


def test_an_experiment_created_meanwhile_by_another_process_is_used(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel sweepers on one server both find no experiment, both create it: one wins."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    create = mlflow.create_experiment

    def lose_the_race(name: str, artifact_location: str | None = None, **kwargs: object) -> str:
        create(name, artifact_location=artifact_location, **kwargs)  # the other process, first
        raise MlflowException(f"Experiment {name!r} already exists.", RESOURCE_ALREADY_EXISTS)

    monkeypatch.setattr(mlflow, "create_experiment", lose_the_race)
    found = mlflow_run.setup_experiment(uri, "raced", str(tmp_path / "mlruns"))
    assert mlflow.tracking.MlflowClient(uri).get_experiment(found).name == "raced"
