"""Where a trained model comes from: a checkpoint path, an MLflow run id or a ``models:/`` URI.

Every reference resolves to a derm_exp ``checkpoint_best.pt`` (and, when known, the training run
it belongs to). The model, its preprocessing and its classes are then read from that checkpoint,
never from the repository's current config files. Registered models are resolved through their
model version's source run: ``models:/NAME@alias`` or ``models:/NAME/<version|latest>`` ->
``run_id`` -> that run's ``checkpoints/checkpoint_best.pt`` artifact.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from derm_exp.errors import ModelSourceError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
BEST_CHECKPOINT = "checkpoints/checkpoint_best.pt"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?$")


NO_MODEL = (
    "no model given: pass model=<checkpoint, run id or models:/ URI>, model=[ref1,ref2,...] "
    "(an ensemble) or group=<sweep id>"
)


def model_refs(value: object) -> list[str]:
    """A ``model=`` value as a list: nothing -> [], one reference -> [it], a list -> its items."""
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, str):  # also omegaconf's ListConfig
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value).strip()] if str(value).strip() else []


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference.

    ``kind`` is ``checkpoint``, ``run`` or ``registry``; ``run_id`` is the training run when known
    (for a local checkpoint: the run id it stores, which may not exist in the tracking store);
    ``split_dir`` is the ``splits/`` folder beside a local checkpoint (runs use their artifacts).
    """

    ref: str
    kind: str
    checkpoint: Path
    run_id: str | None
    tracking_uri: str
    split_dir: Path | None = None
    model_version: str | None = None

    def split_csv(self, split: str) -> Path:
        """The run's saved ``<split>.csv``: the run's artifact, or the copy beside a checkpoint."""
        if self.split_dir is not None and (self.split_dir / f"{split}.csv").is_file():
            return self.split_dir / f"{split}.csv"
        if self.kind != "checkpoint" and self.run_id is not None:
            return run_artifact(self.run_id, f"splits/{split}.csv", self.tracking_uri)
        where = self.split_dir or self.checkpoint.parent / "splits"
        raise ModelSourceError(
            f"no saved {split} split for {self.ref}: expected {where / f'{split}.csv'}. Evaluate "
            "another folder with data.root=<HAM10000 folder> or a CSV with split_csv=<file>"
        )


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's store (as in conf/train.yaml)."""
    from derm_exp.config import PROJECT_ROOT

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT}/mlflow.db"


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from derm_exp.tracking.mlflow_run import check_reachable

    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _mask(uri: str) -> str:
    from derm_exp.tracking.mlflow_run import mask_credentials

    return mask_credentials(uri)


def _local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder behind a ``file:`` (or plain path) artifact URI, else None."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and artifact_uri:
        return Path(artifact_uri)
    return None


def run_artifact(run_id: str, artifact_path: str, tracking_uri: str) -> Path:
    """Local path of a run's artifact: read in place from a local store, else downloaded.

    Downloads go to ``<tmp>/derm_exp_artifacts/<run id>/`` and are refreshed on every call.
    """
    import mlflow

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise ModelSourceError(
            f"no MLflow run {run_id} in {_mask(tracking_uri)} (set tracking.uri to the store the "
            "model was trained in)"
        ) from exc
    local = _local_artifact_dir(run.info.artifact_uri)
    if local is not None and (local / artifact_path).is_file():
        return local / artifact_path
    dst = Path(tempfile.gettempdir()) / "derm_exp_artifacts" / run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact_path,
                dst_path=str(dst),
                tracking_uri=tracking_uri,
            )
        )
    except Exception as exc:  # MLflow raises several types for missing artifacts
        raise ModelSourceError(
            f"run {run_id} has no artifact {artifact_path} ({type(exc).__name__}); was it "
            "trained to the end with derm_exp?"
        ) from exc


def registry_version(uri: str, tracking_uri: str):
    """The ``ModelVersion`` behind ``models:/NAME@alias`` or ``models:/NAME/<version|latest>``."""
    import mlflow

    m = _MODELS_URI.match(uri)
    if not m or not (m["alias"] or m["version"]):
        raise ModelSourceError(
            f"model={uri}: write models:/NAME@alias, models:/NAME/<version> or models:/NAME/latest"
        )
    client = _client(tracking_uri)
    name = m["name"]
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(name, m["alias"])
        if m["version"] == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ModelSourceError(f"registered model {name!r} has no version")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, m["version"])
    except mlflow.exceptions.MlflowException as exc:
        raise ModelSourceError(
            f"model={uri}: not found in the registry at {_mask(tracking_uri)} "
            f"({str(exc).splitlines()[0]})"
        ) from exc


def is_registered_ensemble(version) -> bool:
    """Whether a model version is an ensemble registered by ``derm_exp.ensemble register=true``."""
    return (version.tags or {}).get("kind") == "ensemble"


def _registry_run(uri: str, tracking_uri: str) -> tuple[str, str]:
    """(run id, version) of the single classifier a ``models:/`` URI names."""
    mv = registry_version(uri, tracking_uri)
    if is_registered_ensemble(mv):
        members = (mv.tags or {}).get("members", "")
        raise ModelSourceError(
            f"model={uri} is a registered ensemble ({members or 'several members'}), not one "
            f"classifier: predict with it through `python -m derm_exp.predict model={uri}`, or "
            "evaluate its members together with `python -m derm_exp.ensemble models=[...]`"
        )
    if not mv.run_id:
        raise ModelSourceError(f"model={uri}: version {mv.version} has no source run")
    return mv.run_id, str(mv.version)


def resolve_source(ref: str | os.PathLike, tracking_uri: str | None = None) -> ModelSource:
    """Resolve a checkpoint path (file or run output folder), MLflow run id or ``models:/`` URI."""
    tracking_uri = tracking_uri or default_tracking_uri()
    text = str(ref).strip()
    if not text:
        raise ModelSourceError("no model given: pass model=<checkpoint, run id or models:/ URI>")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "checkpoint_best.pt"
        if not path.is_file():
            raise ModelSourceError(f"model={text}: folder without a checkpoint_best.pt")
    if path.is_file():
        return ModelSource(
            text,
            "checkpoint",
            path.resolve(),
            _stored_run_id(path),
            tracking_uri,
            path.resolve().parent / "splits",
        )
    if text.startswith("models:/"):
        run_id, version = _registry_run(text, tracking_uri)
        return _from_run(text, "registry", run_id, tracking_uri, version)
    if RUN_ID.match(text):
        return _from_run(text, "run", text, tracking_uri)
    raise ModelSourceError(
        f"model={text}: no such checkpoint file, and not an MLflow run id (32 hex characters) or "
        "a registered model URI (models:/NAME@alias)"
    )


def _from_run(
    ref: str, kind: str, run_id: str, tracking_uri: str, version: str | None = None
) -> ModelSource:
    checkpoint = run_artifact(run_id, BEST_CHECKPOINT, tracking_uri)
    return ModelSource(ref, kind, checkpoint, run_id, tracking_uri, model_version=version)


def peek_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's entries, tensors memory-mapped (cheap); {} when it cannot be read."""
    from derm_exp.models.checkpoint import CheckpointError, load_checkpoint

    try:
        ck = load_checkpoint(path, mmap=True)
    except CheckpointError:  # not loadable here: load_classifier reports it clearly later
        return {}
    return ck if isinstance(ck, dict) else {}


def _stored_run_id(path: Path) -> str | None:
    """The training run id recorded in a checkpoint."""
    run_id = peek_checkpoint(path).get("run_id")
    return str(run_id) if run_id else None


def resolve_checkpoint(ref: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Local path of the ``checkpoint_best.pt`` that ``ref`` names (see :func:`resolve_source`)."""
    return resolve_source(ref, tracking_uri).checkpoint


def rewrite_model_override(args: Sequence[str]) -> list[str]:
    """``model=X`` -> ``model_ref=X`` on the command line of the evaluate/predict apps.

    ``model`` is a config group of the shared conf dir, so Hydra would read ``model=X`` as a group
    selection; these apps take a model *reference* instead and store it in ``model_ref``.
    """
    return [f"model_ref={a[len('model=') :]}" if a.startswith("model=") else a for a in args]
