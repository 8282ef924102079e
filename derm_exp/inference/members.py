"""Ensemble members: what each one is, where it comes from, and whether they can be combined.

Research and education only: not a medical device; never use it for diagnosis.

Members are registered model versions (``models:/derm-classifier/3``, ``...@seed-7``), MLflow
run ids or checkpoint paths. Each :class:`Member` records its checkpoint, class list, data
fingerprint and validation metrics; members must share their class list and their data
fingerprint (the same train/val/test split), else :class:`~derm_exp.errors.RegistryError` names
the members and their values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derm_exp.errors import RegistryError
from derm_exp.models.checkpoint import checkpoint_metadata, load_checkpoint
from derm_exp.tracking.model_refs import ModelRef

DEFAULT_RANK_BY = "val_balanced_accuracy"


def lower_is_better(metric: str) -> bool:
    """Losses and calibration errors rank ascending."""
    return any(s in metric for s in ("loss", "nll", "ece", "brier"))


@dataclass
class Member:
    """One ensemble member: where it came from and what it was trained on."""

    name: str
    checkpoint: Path
    classes: list[str]
    data_fingerprint: str | None
    run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for members.json and printing)."""
        return {
            "name": self.name,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "checkpoint": str(self.checkpoint),
            "classes": self.classes,
            "data_fingerprint": self.data_fingerprint,
            "val_metrics": self.val_metrics,
            "tags": {k: v for k, v in self.tags.items() if not k.startswith("val_")},
        }


def member_from_checkpoint(
    path: str | os.PathLike, name: str | None = None, run_id: str | None = None
) -> Member:
    """A member from a local ``checkpoint_best.pt``; its validation metric is the
    selection metric stored in the checkpoint (``best.value`` of ``trainer.monitor``)."""
    path = Path(path)
    meta = checkpoint_metadata(load_checkpoint(path, mmap=True), path)  # weights not read
    metrics = {}
    if meta.monitor and meta.best:
        metrics[meta.monitor.replace("/", "_")] = float(meta.best["value"])
    return Member(
        name=name or str(path),
        checkpoint=path,
        classes=meta.classes,
        data_fingerprint=meta.data_fingerprint,
        run_id=run_id or meta.run_id,
        val_metrics=metrics,
    )


def member_from_version(
    version: Any,
    download_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> Member:
    """A member from a registered model version: its own checkpoint (given, or read in place /
    downloaded under ``download_dir``), tags and validation metrics."""
    from derm_exp.tracking.model_lookup import registered_checkpoint
    from derm_exp.tracking.registry_search import VAL_PREFIX

    if checkpoint is None:
        dst = (
            None
            if download_dir is None
            else Path(download_dir) / f"{version.name}-v{version.version}"
        )
        checkpoint = registered_checkpoint(version, dst)
    member = member_from_checkpoint(checkpoint, f"{version.name}/{version.version}", version.run_id)
    member.model_name, member.model_version = version.name, str(version.version)
    member.tags = dict(version.tags)
    member.val_metrics.update(
        {k: float(v) for k, v in version.tags.items() if k.startswith(VAL_PREFIX)}
    )
    return member


def resolve_member(
    ref: str | os.PathLike | ModelRef,
    download_dir: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
) -> Member:
    """A member from a ``models:/`` URI, an MLflow run id or a checkpoint path/folder: the same
    checkpoint as :func:`derm_exp.inference.sources.resolve_source` loads.

    Registry and runs are looked up in ``tracking_uri`` (default: MLflow's current tracking URI).
    """
    import mlflow

    from derm_exp.inference.sources import resolve_source

    source = resolve_source(ref, tracking_uri or mlflow.get_tracking_uri(), download_dir)
    if source.version is not None:
        return member_from_version(source.version, checkpoint=source.checkpoint)
    return member_from_checkpoint(source.checkpoint, source.ref, source.run_id)


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse members trained on different class lists or different data splits."""
    if not members:
        raise RegistryError("an ensemble needs at least one member; none was selected")
    for attr, what, fix in (
        ("classes", "class lists", "train them on the same classes"),
        (
            "data_fingerprint",
            "data splits (data_fingerprint)",
            "pick members of one sweep (group=...) or filter on tags.data_fingerprint",
        ),
    ):
        values = {m.name: getattr(m, attr) for m in members}
        if len({json.dumps(v) for v in values.values()}) > 1:
            listing = "; ".join(
                f"{name} = {','.join(v) if isinstance(v, list) else v}"
                for name, v in values.items()
            )
            raise RegistryError(
                f"cannot ensemble models trained on different {what}: {listing}. To combine "
                f"models, {fix}"
            )


# ---------------------------------------------------------------------------------------------


def select_members(
    name: str = "derm-classifier",
    *,
    models: Sequence[str | ModelRef] | None = None,
    group: str | None = None,
    tags: Mapping[str, Any] | None = None,
    filter: str | None = None,
    top_k: int | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    download_dir: str | os.PathLike | None = None,
) -> list[Member]:
    """Members from explicit ``models`` (URIs, run ids, checkpoints) or a registry query.

    The query is ``name`` AND ``group`` AND every ``tags`` item AND ``filter`` (MLflow
    ``search_model_versions`` syntax, e.g. ``tags.head = 'acrnn'``); ``top_k`` then keeps
    the best by the validation metric ``rank_by``. Compatibility is checked.
    """
    from derm_exp.tracking.registry_search import build_filter, search_versions
    from derm_exp.tracking.registry_search import top_k as best_versions

    if models:
        if group or filter or any(v is not None for v in (tags or {}).values()):
            raise RegistryError("give either models=[...] or a query (group/tags/filter), not both")
        members = [resolve_member(m, download_dir) for m in models]
        if top_k:
            key = rank_by.replace("/", "_")
            members = sorted(
                members,
                key=lambda m: m.val_metrics.get(key, -math.inf),
                reverse=not lower_is_better(key),
            )[:top_k]
    else:
        versions = search_versions(name, group, tags, filter)
        if not versions:
            raise RegistryError(
                f"no registered version matches {build_filter(name, group, tags, filter)!r}; "
                "list them with `mlflow ui` (Models tab) or MlflowClient().search_model_versions()"
            )
        if top_k:
            versions = best_versions(versions, int(top_k), rank_by)
        members = [member_from_version(v, download_dir) for v in versions]
    check_compatible(members)
    return members
