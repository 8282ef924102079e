"""An export as an MLflow artifact of its source run, and optionally a registered model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from derm_exp.exporting.metadata import sidecar_path

log = logging.getLogger(__name__)
ARTIFACT_DIR = "onnx"
PIP_REQUIREMENTS = ["onnx==1.23.2", "onnxruntime==1.31.1"]


def source_run(run_id: str | None, tracking_uri: str) -> Any | None:
    """The MLflow run ``run_id`` in ``tracking_uri``, or None (unknown, or not in this store:
    e.g. a checkpoint copied from another machine)."""
    if not run_id:
        return None
    from derm_exp.tracking.model_lookup import tracking_client

    try:
        return tracking_client(tracking_uri).get_run(run_id)
    except Exception as exc:  # MlflowException (no such run), unreachable store, ...
        log.warning("not logged to MLflow: run %s not found in %s (%s)", run_id, tracking_uri, exc)
        return None


def log_export(path: Path, run_id: str, tracking_uri: str) -> str:
    """Log the ONNX file and its sidecar JSON as artifacts ``onnx/`` of run ``run_id``; return
    the artifact path of the ONNX file. The run's status is not changed."""
    from derm_exp.tracking.mlflow_run import quiet_artifact_progress
    from derm_exp.tracking.model_lookup import tracking_client

    client = tracking_client(tracking_uri)
    with quiet_artifact_progress():
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
        if sidecar_path(path).is_file():
            client.log_artifact(run_id, str(sidecar_path(path)), ARTIFACT_DIR)
    return f"{ARTIFACT_DIR}/{path.name}"


def register_export(
    path: Path, metadata: dict[str, Any], run_id: str, tracking_uri: str, name: str
) -> str:
    """Log the export as an MLflow ``onnx`` model of run ``run_id`` (loadable with
    ``mlflow.pyfunc.load_model``, which runs it in ONNX Runtime) and register it as ``name``;
    return ``models:/<name>/<version>``."""
    import mlflow
    import onnx

    mlflow.set_tracking_uri(tracking_uri)
    tags = {
        "derm_exp.kind": "onnx_export",
        "precision": str(metadata["precision"]),
        "approximate": str(metadata["approximate"]).lower(),
        "metadata": str((metadata.get("model") or {}).get("metadata") or "none"),
        "source_checkpoint_sha256": str(metadata["source"]["checkpoint_sha256"]),
    }
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name=f"onnx-{metadata['precision']}",
            registered_model_name=name,
            pip_requirements=PIP_REQUIREMENTS,
            metadata={"derm_exp": json.loads(json.dumps(metadata, default=str))},
            save_as_external_data=False,
        )
    version = info.registered_model_version
    from derm_exp.tracking.model_lookup import tracking_client

    client = tracking_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return f"models:/{name}/{version}"
