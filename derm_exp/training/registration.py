"""Register models in the MLflow model registry: a run's best checkpoint, or an ensemble.

The write side of the registry; finding versions again is :mod:`derm_exp.tracking.registry_search`
(which also lists the version tags). A registered classifier version is a pyfunc model
(:mod:`derm_exp.inference.pyfunc_model`) whose only artifact is ``checkpoint_best.pt``, tagged
from the training run (:data:`RUN_TAG_KEYS`), from the checkpoint and with the selected epoch's
validation metrics (:func:`version_tags`).

Every version is tagged ``degenerate`` (true/false). A degenerate model (the end-of-run report's
run tag ``derm_exp.degenerate_model=true``: one class for >= 95 % of the validation images) is
not registered unless ``registry.allow_degenerate=true``; the run is tagged
``derm_exp.registry_skipped=degenerate`` and says how to force it (``python -m derm_exp.train
resume=<run id> registry.allow_degenerate=true``, which registers a finished run without
training it again).

Aliases (:mod:`derm_exp.training.seed_aliases`): ``seed-<n>`` is the best version trained with
seed ``n`` on its validation metric (``trainer.monitor``, ``monitor_mode``), ``latest-seed-<n>``
the newest. MLflow reserves ``latest``; ``models:/derm-classifier/latest`` is the newest version.

Ensembles (``python -m derm_exp.ensemble ... register=true``, :func:`register_ensemble`) are one
pyfunc model holding every member's checkpoint, tagged ``kind=ensemble``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from derm_exp.errors import RegistryError
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.tracking.mlflow_run import quiet_artifact_progress
from derm_exp.tracking.registry_search import (
    ENSEMBLE_KIND,
    KIND_TAG,
    VAL_PREFIX,
    quote,
    search_versions,
)
from derm_exp.training.seed_aliases import update_seed_aliases

if TYPE_CHECKING:
    from derm_exp.inference.members import Member

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
ENSEMBLE_ARTIFACT = "ensemble_model"
RUN_TAG_KEYS = (
    "backbone",
    "model",
    "head",
    "head_class",
    "metadata",
    "loss",
    "loss_class",
    "class_weights",
    "augment",
    "optimizer",
    "scheduler",
    "experiment",
    "seed",
    "data_fingerprint",
    "group",
)
_EXISTS = {ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)}
DEGENERATE_TAG = "derm_exp.degenerate_model"  # set on the run by training.final_report
SKIPPED_TAG = "derm_exp.registry_skipped"  # run tag: why its model was not registered
REGISTERED_TAG = "derm_exp.registered_version"  # run tag: the version it registered last


def selected_val_metrics(
    best_epoch: int,
    history: Mapping[str, Sequence[float]] | None = None,
    run_id: str | None = None,
) -> dict[str, float]:
    """Validation metrics (``val/*``) of the selected epoch (0-based ``best_epoch``).

    Read from the trainer's in-memory ``history`` when given, else from the run's metric
    history in MLflow (step = epoch + 1).
    """
    step = best_epoch + 1
    epochs = list(history.get("epoch", [])) if history is not None else []
    if float(step) in epochs:
        row = epochs.index(float(step))
        return {k[4:]: float(v[row]) for k, v in history.items() if k.startswith("val/")}
    if run_id is None:
        raise ValueError("need the training history or the run id")
    client = MlflowClient()
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("val/"):
            values = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
            if values:
                out[key[4:]] = float(values[-1])
    return out


def version_tags(
    run_tags: Mapping[str, str],
    checkpoint: Mapping[str, Any],
    val_metrics: Mapping[str, float],
    degenerate: bool = False,
) -> dict[str, str]:
    """The tags of a new model version (see :mod:`derm_exp.tracking.registry_search`)."""
    best = checkpoint.get("best") or {}
    tags = {k: str(run_tags[k]) for k in RUN_TAG_KEYS if run_tags.get(k) not in (None, "")}
    tags["data_fingerprint"] = str(checkpoint.get("data_fingerprint", tags.get("data_fingerprint")))
    tags["classes"] = ",".join(checkpoint["classes"])
    tags["weights"] = str(checkpoint.get("weights", best.get("weights", "raw")))
    if "epoch" in best:
        tags["best_epoch"] = str(int(best["epoch"]) + 1)
    trainer = (checkpoint.get("config") or {}).get("trainer", {})
    if trainer.get("monitor"):
        tags["monitor"] = str(trainer["monitor"])
        tags["monitor_mode"] = str(trainer.get("monitor_mode", "max"))
    tags["degenerate"] = str(bool(degenerate)).lower()
    tags["temperature"] = repr(float(checkpoint.get("temperature", 1.0)))
    tags.update({f"{VAL_PREFIX}{k}": repr(float(v)) for k, v in val_metrics.items()})
    return tags


def is_degenerate_run(run_tags: Mapping[str, str], checkpoint: Mapping[str, Any]) -> bool:
    """The end-of-run report's verdict (tag :data:`DEGENERATE_TAG`); without it, the flag that
    selection stored with the checkpoint's score."""
    tag = run_tags.get(DEGENERATE_TAG)
    if tag is not None:
        return str(tag).lower() == "true"
    return bool((checkpoint.get("best") or {}).get("degenerate", False))


def register_best_model(
    cfg: Any,
    run_id: str,
    best_path: str | Path,
    history: Mapping[str, Sequence[float]] | None = None,
) -> ModelVersion | None:
    """Log ``best_path`` as a pyfunc model in run ``run_id``; register it as ``cfg.registry.name``.

    Called by the trainer at the end of a run (the run may be active); ``history`` is the
    trainer's per-epoch metrics, used to tag the version with the selected epoch's validation
    metrics (read from MLflow when omitted). Moves the seed aliases (:mod:`.seed_aliases`).
    Returns None, registering nothing, for a degenerate model unless
    ``registry.allow_degenerate``, and the existing version when this run's checkpoint (same
    best epoch and weights) is registered already.
    """
    name = str(cfg.registry.name)
    checkpoint = load_checkpoint(best_path)
    client = MlflowClient()
    run_tags = client.get_run(run_id).data.tags
    degenerate = is_degenerate_run(run_tags, checkpoint)
    if degenerate and not cfg.registry.get("allow_degenerate", False):
        _refuse_degenerate(client, name, run_id)
        return None
    val = selected_val_metrics(int(checkpoint["best"]["epoch"]), history, run_id)
    tags = version_tags(run_tags, checkpoint, val, degenerate)
    same = _registered_already(name, run_id, tags)
    if same is not None:
        print(f"  already registered: models:/{name}/{same.version} (same checkpoint)")
        return same
    from derm_exp.inference.pyfunc_model import DermClassifierModel

    try:
        artifacts = {CHECKPOINT_ARTIFACT: str(best_path)}
        version = log_and_register(
            name, DermClassifierModel, artifacts, MODEL_ARTIFACT, run_id, tags
        )
        peers = search_versions(name, tags={"seed": tags["seed"]}) if "seed" in tags else []
        aliases = update_seed_aliases(client, name, str(version.version), tags, peers)
        client.set_tag(run_id, REGISTERED_TAG, version.version)
        if SKIPPED_TAG in run_tags:
            client.delete_tag(run_id, SKIPPED_TAG)
    except MlflowException as exc:
        raise RegistryError(
            f"training finished and its checkpoints are logged, but registering model '{name}' "
            f"failed: {exc.message}. The tracking store must support the model registry "
            "(sqlite or a server with a database); or train with registry.enabled=false"
        ) from exc
    extra = f"; group {tags['group']}" if "group" in tags else ""
    flag = " [degenerate, registry.allow_degenerate=true]" if degenerate else ""
    summary = f"models:/{name}/{version.version}{flag} ({aliases.describe()}{extra})"
    log.info("registered %s", summary)
    print(f"  registered {summary}")
    return version


def _refuse_degenerate(client: MlflowClient, name: str, run_id: str) -> None:
    """Tag the run as not registered for being degenerate, and say how to register it anyway."""
    client.set_tag(run_id, SKIPPED_TAG, "degenerate")
    force = f"python -m derm_exp.train resume={run_id} registry.allow_degenerate=true"
    log.warning(
        "not registering run %s as '%s': its selected model predicts one class for (nearly) "
        "every validation image, so no alias may point at it. To register it anyway: %s",
        run_id,
        name,
        force,
    )
    print(f"  not registered: degenerate model. Register it anyway with: {force}")


def _registered_already(name: str, run_id: str, tags: Mapping[str, str]) -> ModelVersion | None:
    """A version of ``name`` from run ``run_id`` with the same best epoch and weights."""
    for version in search_versions(name, filter=f"run_id = {quote(run_id)}"):
        if all(version.tags.get(k) == tags.get(k) for k in ("best_epoch", "weights")):
            return version
    return None


def log_and_register(
    name: str,
    model_class: type,
    artifacts: Mapping[str, str],
    artifact_name: str,
    run_id: str,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Log ``model_class`` (a pyfunc model of :mod:`derm_exp.inference.pyfunc_model`) with
    ``artifacts`` in run ``run_id`` and create a version of ``name`` from it.

    Like ``mlflow.register_model``, but through the client, which prints nothing: the fluent
    call writes "Successfully registered model" / "... already exists. Creating a new version"
    / "Created version" to stderr, between the lines of the log.
    """
    from derm_exp.inference.pyfunc_model import log_pyfunc_model

    active = mlflow.active_run()
    with quiet_artifact_progress():
        if active is not None and active.info.run_id == run_id:
            info = log_pyfunc_model(model_class, dict(artifacts), artifact_name)
        else:
            with mlflow.start_run(run_id=run_id, nested=active is not None):
                info = log_pyfunc_model(model_class, dict(artifacts), artifact_name)
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _EXISTS:
            raise
    return client.create_model_version(
        name, info.model_uri, run_id=run_id, tags=dict(tags), model_id=info.model_id
    )


def register_ensemble(
    name: str,
    members: Sequence[Member],
    aggregation: str,
    weights: Sequence[float] | None,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Log an ensemble as one pyfunc model in the active run and register it as ``name``.

    Its artifacts are ``ensemble.json`` (member names, ``aggregation``, ``weights``) and every
    member's checkpoint; its version is tagged ``kind=ensemble``, ``aggregation``, ``members``,
    ``classes``, ``data_fingerprint``, the members' ``group`` when they share one, and ``tags``.
    """
    from derm_exp.inference.pyfunc_model import DermEnsembleModel

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_ensemble logs into the active MLflow run; none is active")
    spec = {"names": [m.name for m in members], "aggregation": aggregation, "weights": weights}
    version_tags = {
        KIND_TAG: ENSEMBLE_KIND,
        "aggregation": aggregation,
        "members": ",".join(m.name for m in members),
        "classes": ",".join(members[0].classes),
        "data_fingerprint": members[0].data_fingerprint or "",
        **({"group": members[0].tags["group"]} if members[0].tags.get("group") else {}),
        **tags,
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec_path = Path(tmp) / "ensemble.json"
            spec_path.write_text(json.dumps(spec, indent=2))
            artifacts = {"ensemble": str(spec_path)}
            artifacts.update({f"member_{i}": str(m.checkpoint) for i, m in enumerate(members)})
            return log_and_register(
                name, DermEnsembleModel, artifacts, ENSEMBLE_ARTIFACT, run.info.run_id, version_tags
            )
    except MlflowException as exc:
        raise RegistryError(f"registering the ensemble failed: {exc.message}") from exc
