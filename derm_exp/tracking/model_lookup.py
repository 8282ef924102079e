"""Find what a model reference names in MLflow: a run, its artifacts, a registered version and
the files that version holds.

Parsing is :mod:`derm_exp.tracking.model_refs`; every lookup here takes an explicit tracking URI
(None: MLflow's current one), fails fast on an unreachable server and reports a missing run or
version as a :class:`~derm_exp.tracking.model_refs.ModelRefError`, credentials masked. Local
artifact stores are read in place; anything else is downloaded under
``<tmp>/derm_exp_artifacts/`` (refreshed on every call) unless a folder is given.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from derm_exp.tracking.mlflow_run import (  # noqa: E402
    check_reachable,
    mask_credentials,
    quiet_artifact_progress,
)
from derm_exp.tracking.model_refs import (  # noqa: E402
    BEST_CHECKPOINT,
    ModelRef,
    ModelRefError,
    parse_registry_uri,
)
from derm_exp.tracking.registry_search import ENSEMBLE_KIND, KIND_TAG, search_versions  # noqa: E402

DOWNLOADS = "derm_exp_artifacts"


def tracking_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client on ``tracking_uri`` (also its registry), or on MLflow's current URIs."""
    check_reachable(tracking_uri or mlflow.get_tracking_uri())
    if tracking_uri is None:
        return MlflowClient()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _store(tracking_uri: str | None) -> str:
    return mask_credentials(tracking_uri or mlflow.get_tracking_uri())


def get_run(run_id: str, tracking_uri: str | None = None) -> Run:
    """The MLflow run ``run_id``."""
    try:
        return tracking_client(tracking_uri).get_run(run_id)
    except MlflowException as exc:
        raise ModelRefError(
            f"no MLflow run {run_id} in {_store(tracking_uri)} (set tracking.uri to the store the "
            "model was trained in)"
        ) from exc


def _local_dir(artifact_uri: str) -> Path | None:
    """The folder behind a ``file:`` (or plain path) artifact URI, else None."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and artifact_uri:
        return Path(artifact_uri)
    return None


def _download_dir(*parts: str) -> Path:
    return Path(tempfile.gettempdir(), DOWNLOADS, *parts)


def run_artifact(run_id: str, artifact_path: str, tracking_uri: str | None = None) -> Path:
    """Local path of a run's artifact: read in place from a local store, else downloaded to
    ``<tmp>/derm_exp_artifacts/<run id>/``."""
    run = get_run(run_id, tracking_uri)
    local = _local_dir(run.info.artifact_uri)
    if local is not None and (local / artifact_path).is_file():
        return local / artifact_path
    dst = _download_dir(run_id)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_artifact_progress():
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=artifact_path,
                    dst_path=str(dst),
                    tracking_uri=tracking_uri,
                )
            )
    except Exception as exc:  # MLflow raises several types for missing artifacts
        raise ModelRefError(
            f"run {run_id} has no artifact {artifact_path} ({type(exc).__name__}): not a "
            "derm_exp training run, or one that stopped before logging it"
        ) from exc


def resolve_version(ref: str | ModelRef, tracking_uri: str | None = None) -> ModelVersion:
    """The model version behind ``models:/NAME/VERSION``, ``models:/NAME/latest`` (the newest
    version) or ``models:/NAME@ALIAS``."""
    ref = ref if isinstance(ref, ModelRef) else parse_registry_uri(str(ref))
    client = tracking_client(tracking_uri)
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version == "latest":
            versions = search_versions(ref.name, client=client)
            if not versions:
                raise ModelRefError(f"{ref.label}: registered model {ref.name!r} has no version")
            return versions[-1]
        return client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        raise ModelRefError(
            f"{ref.label}: not found in the registry at {_store(tracking_uri)} "
            f"({str(exc.message).splitlines()[0]})"
        ) from exc


def is_registered_ensemble(version: ModelVersion) -> bool:
    """Whether a version is an ensemble registered by ``derm_exp.ensemble register=true``."""
    return (version.tags or {}).get(KIND_TAG) == ENSEMBLE_KIND


def model_dir(
    version: ModelVersion, dst: str | Path | None = None, tracking_uri: str | None = None
) -> Path:
    """The files of a registered version (its MLflow model directory): read in place from a
    local artifact store, else downloaded into ``dst`` (default
    ``<tmp>/derm_exp_artifacts/models/<name>/<version>``)."""
    uri = f"models:/{version.name}/{version.version}"
    try:
        client = tracking_client(tracking_uri)
        location = client.get_model_version_download_uri(version.name, version.version)
        local = _local_dir(location)
        if local is not None and local.is_dir():
            return local
        dst = (
            Path(dst) if dst is not None else _download_dir("models", version.name, version.version)
        )
        dst.mkdir(parents=True, exist_ok=True)
        with quiet_artifact_progress():
            return Path(
                # the version's own location (e.g. mlflow-artifacts:/... on a server): a models:/
                # URI would be looked up in MLflow's global registry, not in ``tracking_uri``
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location,
                    dst_path=str(dst),
                    tracking_uri=tracking_uri or mlflow.get_tracking_uri(),
                )
            )
    except MlflowException as exc:
        raise ModelRefError(f"cannot download {uri}: {exc.message}") from exc


def checkpoint_of(model_dir: str | Path) -> Path:
    """The checkpoint inside a registered classifier's files: the pyfunc model's artifact
    (``artifacts/*.pt``), or a ``checkpoint_best.pt`` at the top (a version registered from a
    run's ``checkpoints/`` folder)."""
    folder = Path(model_dir)
    for candidate in (*sorted((folder / "artifacts").glob("*.pt")), folder / BEST_CHECKPOINT):
        if candidate.is_file():
            return candidate
    raise ModelRefError(
        f"{folder} holds no checkpoint (artifacts/*.pt or {BEST_CHECKPOINT}): not a "
        "derm-classifier model"
    )


def registered_checkpoint(
    version: ModelVersion,
    dst: str | Path | None = None,
    tracking_uri: str | None = None,
    label: str | None = None,
) -> Path:
    """The registered classifier version's own checkpoint file, which is what the registry
    promises (the source run's ``checkpoints/`` may have moved on, e.g. after a resume).
    A registered ensemble is refused: it is several classifiers. ``label`` names the
    reference in messages (default: the version's URI)."""
    uri = f"models:/{version.name}/{version.version}"
    if is_registered_ensemble(version):
        members = (version.tags or {}).get("members", "")
        raise ModelRefError(
            f"{label or uri} is a registered ensemble ({members or 'several members'}), not one "
            f"classifier: predict with it through `python -m derm_exp.predict model={uri}`, "
            "or evaluate its members together with `python -m derm_exp.ensemble models=[...]`"
        )
    return checkpoint_of(model_dir(version, dst, tracking_uri))
