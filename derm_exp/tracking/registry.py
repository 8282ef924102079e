"""MLflow model registry: register a run's best checkpoint and find registered versions again.

A registered version is a pyfunc model (:mod:`derm_exp.inference.pyfunc_model`) whose only
artifact is ``checkpoint_best.pt``. Its version tags say what it is, so ensembles can be
assembled by query (``tags.group = '...'``) and refuse incompatible members:

* from the training run (:data:`RUN_TAG_KEYS`): ``backbone`` (timm name), the selected option of
  the config groups as typed (``model``, ``head``, ``loss``, ``augment``, ``optimizer``,
  ``scheduler``, ``experiment``; see :mod:`derm_exp.tracking.choices`), ``head_class`` /
  ``loss_class``, ``class_weights``, ``seed``, ``data_fingerprint`` (hash of the split
  assignment) and ``group`` (sweep id, when set). :func:`search_versions` matches ``head`` /
  ``loss`` by option or class name, so versions tagged with class names are still found;
* from the checkpoint: ``classes`` (comma-separated, in output order), ``weights`` (raw/ema),
  ``best_epoch`` (1-based), ``monitor`` / ``monitor_mode`` (the selection metric) and
  ``temperature``;
* ``val_<metric>`` for every validation metric of the selected epoch (``val_balanced_accuracy``,
  ``val_macro_f1``, ``val_macro_auc``, ``val_nll``, ...). No test metric is stored here, so
  nothing can rank models on the test split.

Every version is tagged ``degenerate`` (true/false). A degenerate model (the end-of-run report's
run tag ``derm_exp.degenerate_model=true``: one class for >= 95 % of the validation images) is
not registered unless ``registry.allow_degenerate=true``; the run is tagged
``derm_exp.registry_skipped=degenerate`` and says how to force it (``python -m derm_exp.train
resume=<run id> registry.allow_degenerate=true``, which registers a finished run without
training it again).

Aliases (:mod:`derm_exp.tracking.aliases`): ``seed-<n>`` is the best version trained with seed
``n`` on its validation metric (``trainer.monitor``, ``monitor_mode``), ``latest-seed-<n>`` the
newest. MLflow reserves ``latest``; ``models:/derm-classifier/latest`` is the newest version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from derm_exp.errors import RegistryError
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.tracking.aliases import update_seed_aliases
from derm_exp.tracking.choices import other_spellings
from derm_exp.tracking.mlflow_run import MultirunCallback, group_of, quiet_artifact_progress

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "derm-classifier"
MODEL_ARTIFACT = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
RUN_TAG_KEYS = (
    "backbone",
    "model",
    "head",
    "head_class",
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
VAL_PREFIX = "val_"
_EXISTS = {ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)}
DEGENERATE_TAG = "derm_exp.degenerate_model"  # set on the run by training.final_report
SKIPPED_TAG = "derm_exp.registry_skipped"  # run tag: why its model was not registered
REGISTERED_TAG = "derm_exp.registered_version"  # run tag: the version it registered last
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[\w-]+))$")


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
    """The tags of a new model version (see the module docstring)."""
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
    metrics (read from MLflow when omitted). Moves the seed aliases (:mod:`.aliases`).
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
        return None
    val = selected_val_metrics(int(checkpoint["best"]["epoch"]), history, run_id)
    tags = version_tags(run_tags, checkpoint, val, degenerate)
    same = _registered_already(name, run_id, tags)
    if same is not None:
        print(f"  already registered: models:/{name}/{same.version} (same checkpoint)")
        return same
    try:
        version = _log_and_register(name, run_id, best_path, tags)
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


def _registered_already(name: str, run_id: str, tags: Mapping[str, str]) -> ModelVersion | None:
    """A version of ``name`` from run ``run_id`` with the same best epoch and weights."""
    for version in search_versions(name, filter=f"run_id = {_quote(run_id)}"):
        if all(version.tags.get(k) == tags.get(k) for k in ("best_epoch", "weights")):
            return version
    return None


def _log_and_register(
    name: str, run_id: str, best_path: str | Path, tags: Mapping[str, str]
) -> ModelVersion:
    """Log the pyfunc model in run ``run_id`` and create a version of ``name`` from it.

    Like ``mlflow.register_model``, but through the client, which prints nothing: the fluent
    call writes "Successfully registered model" / "... already exists. Creating a new version"
    / "Created version" to stderr, between the lines of the training log.
    """
    from derm_exp.inference.pyfunc_model import DermClassifierModel, log_pyfunc_model

    active = mlflow.active_run()
    artifacts = {CHECKPOINT_ARTIFACT: str(best_path)}
    with quiet_artifact_progress():
        if active is not None and active.info.run_id == run_id:
            info = log_pyfunc_model(DermClassifierModel, artifacts, MODEL_ARTIFACT)
        else:
            with mlflow.start_run(run_id=run_id, nested=active is not None):
                info = log_pyfunc_model(DermClassifierModel, artifacts, MODEL_ARTIFACT)
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _EXISTS:
            raise
    return client.create_model_version(
        name, info.model_uri, run_id=run_id, tags=dict(tags), model_id=info.model_id
    )


# ---------------------------------------------------------------------------------------------
# Sweeps


class SweepCallback(MultirunCallback):
    """:class:`MultirunCallback` that also prints the command ensembling the sweep's models."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print(f"\nEnsemble this sweep: python -m derm_exp.ensemble group={group_of(config)}")


# ---------------------------------------------------------------------------------------------
# Finding versions


def _quote(value: Any) -> str:
    text = str(value)
    if "'" in text:
        raise RegistryError(f"tag values with a single quote cannot be searched: {text!r}")
    return f"'{text}'"


def _tag_key(key: str) -> str:
    return f"tags.`{key}`" if not re.fullmatch(r"\w+", key) else f"tags.{key}"


def build_filter(
    name: str,
    group: str | None = None,
    tags: Mapping[str, Any] | None = None,
    filter: str | None = None,
) -> str:
    """An MLflow ``search_model_versions`` filter for model ``name`` and the given conditions."""
    parts = [f"name = {_quote(name)}"]
    if group is not None:
        parts.append(f"tags.group = {_quote(group)}")
    for key, value in (tags or {}).items():
        if value is not None:
            parts.append(f"{_tag_key(key)} = {_quote(value)}")
    if filter:
        parts.append(filter)  # MLflow's version search supports AND only
    return " AND ".join(parts)


def search_versions(
    name: str = DEFAULT_MODEL_NAME,
    group: str | None = None,
    tags: Mapping[str, Any] | None = None,
    filter: str | None = None,
) -> list[ModelVersion]:
    """Every version of ``name`` matching ``group``, ``tags`` and ``filter``, oldest first.

    ``tags`` on ``head``/``loss`` accept option names (``loss=label_smoothing``) and class names
    (``head=ACRNNHead``) alike, for versions tagged before and after option names
    (:func:`derm_exp.tracking.choices.other_spellings`); ``filter`` is passed to MLflow as is.
    """
    client = MlflowClient()
    found = {v.version: v for v in _search(client, build_filter(name, group, tags, filter))}
    params: dict[str, Mapping[str, str]] = {}

    def params_of(run_id: str | None) -> Mapping[str, str]:
        if run_id and run_id not in params:
            try:
                params[run_id] = client.get_run(run_id).data.params
            except MlflowException:
                params[run_id] = {}
        return params.get(run_id or "", {})

    for alt, keep in other_spellings(tags or {}, params_of):
        for version in _search(client, build_filter(name, group, alt, filter)):
            if version.version not in found and keep(version):
                found[version.version] = version
    return sorted(found.values(), key=lambda v: int(v.version))


def _search(client: MlflowClient, query: str) -> list[ModelVersion]:
    found: list[ModelVersion] = []
    token = None
    try:
        while True:
            page = client.search_model_versions(query, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
    except MlflowException as exc:
        raise RegistryError(f"registry search {query!r} failed: {exc.message}") from exc
    return found


def metric_value(version: ModelVersion, rank_by: str) -> float:
    """The validation metric ``rank_by`` (``val_balanced_accuracy`` or ``val/...``) of a version."""
    key = rank_by.replace("/", "_")
    if not key.startswith(VAL_PREFIX):
        raise RegistryError(
            f"rank_by={rank_by!r}: only validation metrics (val_*) can rank models; the test "
            "split is reserved for the final evaluation"
        )
    value = version.tags.get(key)
    if value is None:
        known = sorted(k for k in version.tags if k.startswith(VAL_PREFIX))
        raise RegistryError(
            f"{version.name} version {version.version} has no tag {key!r}; "
            f"its validation metrics: {', '.join(known) or 'none'}"
        )
    return float(value)


def top_k(
    versions: Sequence[ModelVersion], k: int, rank_by: str, higher_is_better: bool | None = None
) -> list[ModelVersion]:
    """The ``k`` best versions by validation metric ``rank_by`` (ties: newer version first).

    ``higher_is_better`` defaults to False for losses (``nll``, ``loss``, ``ece``, ``brier``).
    """
    if k < 1:
        raise RegistryError(f"top_k must be >= 1, got {k}")
    if higher_is_better is None:
        higher_is_better = not any(s in rank_by for s in ("loss", "nll", "ece", "brier"))
    sign = 1.0 if higher_is_better else -1.0
    ranked = sorted(
        versions, key=lambda v: (sign * metric_value(v, rank_by), int(v.version)), reverse=True
    )
    return ranked[:k]


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
