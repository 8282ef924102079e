"""Open, resume and fill MLflow runs for training jobs."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from derm_exp.errors import UserError
from derm_exp.tracking.http_settings import apply_http_defaults

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
apply_http_defaults()  # before MLflow reads them

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_SECRET_KEYS = re.compile(r"(password|secret|token|api_key)", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"(?<=[?&;])(?P<key>[\w.-]*(?:password|passwd|secret|token|api_key|apikey|access_key)[\w.-]*)=[^&#\s]+",
    re.IGNORECASE,
)


# MLflow 3's UI opens an experiment on what this tag says it holds; without it (or with a value
# the UI inferred itself) it may open the GenAI "traces" overview with empty charts.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _guessed_kind(kind: str | None) -> bool:
    """No kind, or one MLflow's UI inferred (``*_inferred``, ``no_inferred_type``); a kind a
    user chose is kept."""
    return not kind or kind.endswith("_inferred") or kind == "no_inferred_type"


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


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


@contextlib.contextmanager
def quiet_artifact_progress() -> Iterator[None]:
    """No MLflow "Downloading artifacts" progress bar inside the block: our own calls copy a few
    small files (a checkpoint into a logged model, a checkpoint to resume) and the bar would
    interleave the training log. Warnings are unaffected; a user's own
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` setting wins."""
    if _PROGRESS_BAR in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR] = "false"  # read by MLflow at each transfer
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR, None)


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
    The experiment is tagged as model training (:data:`EXPERIMENT_KIND`), new or existing.
    """
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment_name)
        if exp is not None:
            check_artifact_location(exp.artifact_location)
            if _guessed_kind(exp.tags.get(EXPERIMENT_KIND_TAG)):
                MlflowClient().set_experiment_tag(
                    exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                )
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
        return mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
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


def training_run_tags(
    cfg: Any, choices: Mapping[str, str], fingerprint: str, output_dir: Path
) -> dict[str, Any]:
    """The tags of a training run: the selected option of every config group (``head=acrnn``,
    ``loss=label_smoothing``, see :mod:`derm_exp.tracking.choices`), the classes behind head
    and loss, seed, data fingerprint, the sweep ``group`` of a multirun, ``tracking.tags``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from derm_exp.tracking.choices import choice_tags, class_tags

    tags = {
        "backbone": cfg.model.name,
        "augment": cfg.augment.name,
        **class_tags(cfg),
        **choice_tags(choices),
        "class_weights": str(cfg.loss.class_weights or "none"),
        "seed": cfg.seed,
        "data_fingerprint": fingerprint,
        "derm_exp.checkpoint_dir": str(output_dir.resolve()),
        "mlflow.note.content": "Research/education only: not a medical device.",
        "derm_exp.kind": "training",
    }
    tags.update(OmegaConf.to_container(cfg.tracking.tags, resolve=True))
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and "group" not in tags:
        # One id for every job of a multirun (the sweep folder is shared, also under joblib):
        # filter them in `mlflow ui` with tags.group = '<date>/<time>'.
        tags["group"] = sweep_group(HydraConfig.get().sweep.dir)
    return tags


def sweep_group(sweep_dir: str | Path) -> str:
    """The group id of a multirun: ``<parent>/<name>`` of its sweep folder (shared by its jobs,
    also under the joblib launcher), e.g. ``2026-11-22/11-43-16``."""
    path = Path(str(sweep_dir))
    return f"{path.parent.name}/{path.name}"


def group_of(config: Any) -> str:
    """``tracking.tags.group`` when set, else the multirun's :func:`sweep_group`."""
    tags = config.tracking.get("tags") or {}
    return str(tags["group"]) if tags.get("group") else sweep_group(config.hydra.sweep.dir)
