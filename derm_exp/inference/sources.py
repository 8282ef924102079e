"""What to load for a model reference: a checkpoint path, an MLflow run id or a ``models:/`` URI.

Every reference (parsed by :mod:`derm_exp.tracking.model_refs`) resolves to one derm_exp
``checkpoint_best.pt`` and, when known, the training run it belongs to; the model, its
preprocessing and its classes are then read from that checkpoint, never from the repository's
current config files. The same reference gives the same file in every tool (predict, evaluate,
ensembles, the Python loaders):

* a path: that file (or the ``checkpoint_best.pt`` of that output folder);
* a run id: the run's ``checkpoints/checkpoint_best.pt`` artifact;
* ``models:/NAME@alias`` or ``models:/NAME/<version|latest>``: the registered version's own
  checkpoint (the pyfunc model's artifact, which is what the registry promises; the source
  run's checkpoint may have moved on since), with the version's source run for its splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derm_exp.errors import ModelSourceError
from derm_exp.tracking.model_refs import BEST_CHECKPOINT, ModelRef, parse_ref

RUN_CHECKPOINT = f"checkpoints/{BEST_CHECKPOINT}"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference.

    ``kind`` is ``checkpoint``, ``run`` or ``registry``; ``run_id`` is the training run when known
    (for a local checkpoint: the run id it stores, which may not exist in the tracking store);
    ``split_dir`` is the ``splits/`` folder beside a local checkpoint (runs use their artifacts);
    ``version`` is the registered model version (``registry`` only).
    """

    ref: str
    kind: str
    checkpoint: Path
    run_id: str | None
    tracking_uri: str
    split_dir: Path | None = None
    model_version: str | None = None
    version: Any = None  # mlflow ModelVersion

    def split_csv(self, split: str) -> Path:
        """The run's saved ``<split>.csv``: the run's artifact, or the copy beside a checkpoint."""
        if self.split_dir is not None and (self.split_dir / f"{split}.csv").is_file():
            return self.split_dir / f"{split}.csv"
        if self.kind != "checkpoint" and self.run_id is not None:
            from derm_exp.tracking.model_lookup import run_artifact

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


def resolve_source(
    ref: str | os.PathLike | ModelRef,
    tracking_uri: str | None = None,
    download_dir: str | os.PathLike | None = None,
) -> ModelSource:
    """Resolve a checkpoint path (file or run output folder), MLflow run id or ``models:/`` URI
    of one classifier (a registered ensemble is refused). Registered versions that must be
    downloaded go to ``download_dir`` when given."""
    tracking_uri = tracking_uri or default_tracking_uri()
    parsed = parse_ref(ref)
    if parsed.kind == "checkpoint":
        path = parsed.path
        return ModelSource(
            parsed.text,
            "checkpoint",
            path,
            _stored_run_id(path),
            tracking_uri,
            path.parent / "splits",
        )
    from derm_exp.tracking.model_lookup import (
        registered_checkpoint,
        resolve_version,
        run_artifact,
    )

    if parsed.kind == "run":
        checkpoint = run_artifact(parsed.run_id, RUN_CHECKPOINT, tracking_uri)
        return ModelSource(parsed.text, "run", checkpoint, parsed.run_id, tracking_uri)
    version = resolve_version(parsed, tracking_uri)
    dst = (
        None if download_dir is None else Path(download_dir) / f"{version.name}-v{version.version}"
    )
    checkpoint = registered_checkpoint(version, dst, tracking_uri, parsed.label)
    return ModelSource(
        parsed.text,
        "registry",
        checkpoint,
        version.run_id or _stored_run_id(checkpoint),
        tracking_uri,
        model_version=str(version.version),
        version=version,
    )


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
