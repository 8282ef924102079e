"""Open, resume and fill MLflow runs for training jobs."""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from derm_exp.errors import UserError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# HTTP tracking servers: MLflow's own defaults retry a refused connection for ~4 minutes
# (7 retries, 120 s timeout). The training config's tracking.request_timeout_s / max_retries /
# retry_backoff_s set these per run (configure_http); these defaults match conf/train.yaml.
HTTP_ENV = {
    "request_timeout_s": "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "retry_backoff_s": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
}
HTTP_DEFAULTS = {"request_timeout_s": 20, "max_retries": 3, "retry_backoff_s": 2}
for _key, _var in HTTP_ENV.items():
    os.environ.setdefault(_var, str(HTTP_DEFAULTS[_key]))

import mlflow  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_SECRET_KEYS = re.compile(r"(password|secret|token|api_key)", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"(?<=[?&;])(?P<key>[\w.-]*(?:password|passwd|secret|token|api_key|apikey|access_key)[\w.-]*)=[^&#\s]+",
    re.IGNORECASE,
)


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used."""


def mask_credentials(value: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URIs and secret query parameters
    (``?token=...``, ``&password=...``)."""
    value = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}=***", value)


def redact_config(config: Any) -> Any:
    """Deep copy of a plain config with credentials masked (URIs) or replaced (secret keys).

    Used for everything that persists the config: MLflow params, the logged resolved config and
    the checkpoints (which travel with registered models). Credentials belong in the
    environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), not in configs.
    """
    if isinstance(config, Mapping):
        return {
            k: "***" if _SECRET_KEYS.search(str(k)) and v is not None else redact_config(v)
            for k, v in config.items()
        }
    if isinstance(config, list | tuple):
        return type(config)(redact_config(v) for v in config)
    if isinstance(config, str):
        return mask_credentials(config)
    return config


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


def configure_http(tracking: Mapping[str, Any]) -> None:
    """Bound how long MLflow waits for an HTTP tracking server: each request times out after
    ``request_timeout_s`` and is retried ``max_retries`` times, ``retry_backoff_s`` x 2, 4, ...
    seconds apart (MLflow's ``MLFLOW_HTTP_REQUEST_*`` variables, read at every request)."""
    for key, var in HTTP_ENV.items():
        value = tracking.get(key)
        if value is None:
            continue
        low = 1 if key == "request_timeout_s" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TrackingError(f"tracking.{key}={value!r}: give a whole number >= {low}")
        os.environ[var] = str(value)


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
            check_artifact_location(exp.artifact_location)
            return exp.experiment_id
        location = None
        if artifact_root and urllib.parse.urlparse(uri).scheme in {"sqlite", "file", ""}:
            location = (Path(artifact_root) / experiment_name).resolve().as_uri()
            check_artifact_location(location)
        return _create_experiment(experiment_name, location)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot use tracking store {mask_credentials(uri)}: {exc}") from exc


def _create_experiment(name: str, location: str | None) -> str:
    """Create experiment ``name``, or return its id when another process (a parallel sweeper or
    job on a shared server) created it meanwhile."""
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def check_artifact_location(location: str | None) -> None:
    """Fail before training when a local artifact folder cannot be written (read-only, under a
    file, disk full); remote stores (s3://, http://, ...) are checked by their first upload."""
    if not location:
        return
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in {"file", ""}:
        return
    folder = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise TrackingError(
            f"MLflow artifact folder {folder} is not writable ({exc.__class__.__name__}: "
            f"{exc.strerror or exc}). Free space / fix its permissions, or point "
            "tracking.artifact_root at a writable folder (a new experiment name, "
            "tracking.experiment_name=..., is needed when the experiment already exists)"
        ) from exc


def run_url_hint(run_id: str) -> str:
    """Where to find a run in ``mlflow ui`` (started with ``make ui``)."""
    run = MlflowClient().get_run(run_id)
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):  # never print credentials: the browser asks for them itself
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    else:
        base = "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def sweep_group(sweep_dir: str | Path) -> str:
    """The group id of a multirun: ``<parent>/<name>`` of its sweep folder (shared by its jobs,
    also under the joblib launcher), e.g. ``2026-11-22/11-43-16``."""
    path = Path(str(sweep_dir))
    return f"{path.parent.name}/{path.name}"


def group_of(config: Any) -> str:
    """``tracking.tags.group`` when set, else the multirun's :func:`sweep_group`."""
    tags = config.tracking.get("tags") or {}
    return str(tags["group"]) if tags.get("group") else sweep_group(config.hydra.sweep.dir)


class MultirunCallback(Callback):
    """Hydra callback of the training app (``conf/train.yaml``).

    Every job, wherever it runs: bound MLflow's HTTP timeouts and retries (:func:`configure_http`)
    before it talks to a tracking server. Multiruns, before the jobs: create the MLflow store and
    experiment once in the launching process (parallel launchers such as joblib otherwise race to
    create a fresh sqlite schema: "duplicate column name") and print the group id that tags every
    job's run.
    """

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        _configure_or_exit(config.tracking)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        t = config.tracking
        _configure_or_exit(t)
        setup_experiment(t.uri, t.experiment_name, t.artifact_root)
        group = group_of(config)
        print(f"sweep group: {group}  (filter runs in `mlflow ui` with: tags.group = '{group}')")


def _configure_or_exit(tracking: Any) -> None:
    """:func:`configure_http`; a bad value is one ``error:`` line (exit 1), not a traceback."""
    try:
        configure_http(tracking)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
