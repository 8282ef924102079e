"""Find what a registered model URI names: its model version and the files it holds."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from derm_exp.errors import RegistryError
from derm_exp.tracking.registry_search import search_versions

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[\w-]+))$")


def resolve_version(uri: str) -> ModelVersion:
    """The model version behind ``models:/NAME/VERSION``, ``models:/NAME/latest`` or
    ``models:/NAME@ALIAS``."""
    m = _MODEL_URI.match(uri)
    if not m:
        raise RegistryError(
            f"{uri!r} is not a registered model URI; use models:/NAME/VERSION, "
            "models:/NAME/latest or models:/NAME@ALIAS"
        )
    client = MlflowClient()
    name = m["name"]
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(name, m["alias"])
        if m["version"] == "latest":
            versions = search_versions(name)
            if not versions:
                raise RegistryError(f"model '{name}' has no versions")
            return versions[-1]
        return client.get_model_version(name, m["version"])
    except MlflowException as exc:
        raise RegistryError(f"cannot resolve {uri}: {exc.message}") from exc


def model_dir(version: ModelVersion, dst: str | Path | None = None) -> Path:
    """A version's MLflow model directory: read in place from a local artifact store, else
    downloaded (into ``dst`` when given)."""
    import urllib.parse
    import urllib.request

    uri = f"models:/{version.name}/{version.version}"
    try:
        location = MlflowClient().get_model_version_download_uri(version.name, version.version)
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme in ("file", ""):
            local = Path(urllib.request.url2pathname(parsed.path))
            if (local / "MLmodel").is_file():
                return local
        if dst is not None:
            Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except MlflowException as exc:
        raise RegistryError(f"cannot download {uri}: {exc.message}") from exc


def checkpoint_of(model_dir: str | Path) -> Path:
    """The checkpoint file inside a downloaded derm_exp pyfunc model directory."""
    files = sorted((Path(model_dir) / "artifacts").glob("*.pt"))
    if not files:
        raise RegistryError(
            f"{model_dir} holds no checkpoint (artifacts/*.pt): not a derm-classifier model"
        )
    return files[0]
