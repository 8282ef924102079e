"""Open, resume and fill MLflow runs for training jobs."""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_SECRET_KEYS = re.compile(r"(password|secret|token|api_key)", re.IGNORECASE)


class TrackingError(RuntimeError):
    """The tracking store cannot be used."""


def mask_credentials(value: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URIs."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)


def flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Flatten nested mappings to dotted keys."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from flatten(v, f"{key}.")
        else:
            yield key, v


def loggable_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened resolved config as MLflow params, credentials masked."""
    out = {}
    for key, value in flatten(config):
        text = mask_credentials(str(value))
        if _SECRET_KEYS.search(key.rsplit(".", 1)[-1]) and value is not None:
            text = "***"
        out[key] = text[:6000]
    return out


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds) when an http(s) tracking server cannot be reached."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in {"http", "https"}:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise TrackingError(
            f"MLflow tracking server {mask_credentials(uri)} is unreachable ({exc}). Start it, or "
            "train against the local store with tracking.uri=sqlite:///$PWD/mlflow.db"
        ) from exc


def setup_experiment(uri: str, experiment_name: str, artifact_root: str | None) -> str:
    """Point MLflow at ``uri`` and return the experiment id, creating the experiment if needed.

    For local stores, artifacts go to ``artifact_root/<experiment name>`` (an absolute path
    anchored at the project root, not the process cwd); servers choose their own location.
    """
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment_name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if artifact_root and urllib.parse.urlparse(uri).scheme in {"sqlite", "file", ""}:
            location = (Path(artifact_root) / experiment_name).resolve().as_uri()
        return mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot use tracking store {mask_credentials(uri)}: {exc}") from exc


def run_url_hint(run_id: str) -> str:
    """Where to find a run in ``mlflow ui`` (started with ``make ui``)."""
    run = MlflowClient().get_run(run_id)
    uri = mlflow.get_tracking_uri()
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
