"""Find registered model versions again: filters, tag searches and ranking by validation metrics.

The query side of the MLflow model registry (registering is :mod:`derm_exp.training.registration`).
A registered classifier version is a pyfunc model whose only artifact is ``checkpoint_best.pt``;
its version tags say what it is, so ensembles can be assembled by query (``tags.group = '...'``)
and refuse incompatible members:

* from the training run: ``backbone`` (timm name), the selected option of the config groups as
  typed (``model``, ``head``, ``loss``, ``augment``, ``optimizer``, ``scheduler``,
  ``experiment``; see :mod:`derm_exp.tracking.choices`), ``head_class`` / ``loss_class``,
  ``class_weights``, ``seed``, ``data_fingerprint`` (hash of the split assignment) and ``group``
  (sweep id, when set). :func:`search_versions` matches ``head`` / ``loss`` by option or class
  name, so versions tagged with class names are still found;
* from the checkpoint: ``classes`` (comma-separated, in output order), ``weights`` (raw/ema),
  ``best_epoch`` (1-based), ``monitor`` / ``monitor_mode`` (the selection metric) and
  ``temperature``;
* ``degenerate`` (true/false: one class for >= 95 % of the validation images);
* ``val_<metric>`` for every validation metric of the selected epoch (``val_balanced_accuracy``,
  ``val_macro_f1``, ``val_macro_auc``, ``val_nll``, ...). No test metric is stored here, so
  nothing can rank models on the test split.

A registered ensemble (``derm_exp.ensemble register=true``) is tagged ``kind=ensemble``,
``aggregation``, ``members``, ``classes``, ``data_fingerprint`` and the members' ``group``.

Aliases: ``seed-<n>`` is the best version trained with seed ``n`` on its validation metric,
``latest-seed-<n>`` the newest (:mod:`derm_exp.training.seed_aliases`). MLflow reserves
``latest``; ``models:/derm-classifier/latest`` is the newest version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from derm_exp.errors import RegistryError
from derm_exp.tracking.choices import other_spellings

DEFAULT_MODEL_NAME = "derm-classifier"
VAL_PREFIX = "val_"
KIND_TAG, ENSEMBLE_KIND = "kind", "ensemble"  # the version tag of a registered ensemble


def quote(value: Any) -> str:
    """``value`` as a quoted string of MLflow's search syntax."""
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
    parts = [f"name = {quote(name)}"]
    if group is not None:
        parts.append(f"tags.group = {quote(group)}")
    for key, value in (tags or {}).items():
        if value is not None:
            parts.append(f"{_tag_key(key)} = {quote(value)}")
    if filter:
        parts.append(filter)  # MLflow's version search supports AND only
    return " AND ".join(parts)


def search_versions(
    name: str = DEFAULT_MODEL_NAME,
    group: str | None = None,
    tags: Mapping[str, Any] | None = None,
    filter: str | None = None,
    client: MlflowClient | None = None,
) -> list[ModelVersion]:
    """Every version of ``name`` matching ``group``, ``tags`` and ``filter``, oldest first.

    ``tags`` on ``head``/``loss`` accept option names (``loss=label_smoothing``) and class names
    (``head=ACRNNHead``) alike, for versions tagged before and after option names
    (:func:`derm_exp.tracking.choices.other_spellings`); ``filter`` is passed to MLflow as is.
    ``client`` defaults to one on MLflow's current tracking URI.
    """
    client = client or MlflowClient()
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
