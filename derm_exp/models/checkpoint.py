"""The checkpoint schema: what ``checkpoint_best.pt`` and ``checkpoint_latest.pt`` hold, its
versioned format, and atomic writing / code-free loading.

Every derm_exp checkpoint is a plain dict (tensors and plain containers, so it loads with
``torch.load(weights_only=True)``): the shared metadata of :class:`CheckpointMeta` (built by
:func:`checkpoint_meta`) plus what :class:`BestCheckpoint` (the selected weights) or
:class:`LatestCheckpoint` (everything needed to resume) add. ``format`` names the schema and its
version, ``derm_exp.checkpoint/<N>``. :func:`load_checkpoint` checks it: a file of a newer
version is refused with a clear :class:`CheckpointError`, an older one is migrated in memory to
the current version (version 1: every file written before the version was checked, including
those with no ``format`` key). Readers take the metadata through :func:`checkpoint_metadata`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import torch

from derm_exp.config import derive_choices
from derm_exp.errors import UserError

FORMAT_NAME = "derm_exp.checkpoint"
# 1: config, classes, data_config, data_fingerprint and, in later files, run_id and choices.
# 2: choices (the config-group options the model was built from), run_id and kind always held;
#    the history's val_raw/* and val_ema/* lists have one value per epoch like the others.
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
_FORMAT = re.compile(rf"^{re.escape(FORMAT_NAME)}/(?P<version>\d+)$")
# What makes a dict a derm_exp checkpoint (a plain state_dict or another file has none of it).
_META_KEYS = ("config", "classes", "data_config")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to something else."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: temp file in the same folder, fsync, rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (temp file + fsync + rename); no-op onto itself."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


# ---------------------------------------------------------------------------------------------
# The schema


class CheckpointMeta(TypedDict):
    """What every derm_exp checkpoint holds besides the weights.

    ``config``: the run's resolved config (credentials redacted); ``choices``: the option of
    each config group the model was built from (``{"model": "tiny", "model/head": "acrnn",
    "loss": "focal", ...}``, see :mod:`derm_exp.tracking.choices`); ``classes``: the output
    order; ``data_config``: timm's preprocessing (input size, mean, std, ...);
    ``data_fingerprint``: hash of the split assignment; ``run_id``: the MLflow training run;
    ``metadata_encoding`` (metadata-fusion models only; absent or None in image-only ones and in
    files from before it): the patient-metadata encoder fitted on the training split, as the
    plain dict of :meth:`derm_exp.data.metadata_encoding.MetadataEncoder.to_dict`.
    """

    format: str
    kind: Literal["best", "latest"]
    config: dict[str, Any]
    choices: dict[str, str]
    classes: list[str]
    data_config: dict[str, Any]
    data_fingerprint: str
    run_id: str | None
    metadata_encoding: NotRequired[dict[str, Any] | None]


class BestCheckpoint(CheckpointMeta):
    """``checkpoint_best.pt``: the selected weights (raw or EMA) of the best epoch so far.

    ``best`` is the selection score (``value`` of ``trainer.monitor``, ``loss``, ``weights``,
    ``epoch``, ``degenerate``); ``temperature`` is fitted on the validation split by the final
    report (absent before it ran: 1.0). ``abstention`` (optional, absent in older files) is the
    selective-prediction threshold fitted on the validation split after the temperature
    (:func:`derm_exp.evaluation.selective.fit_threshold`: ``threshold``, ``target``, the
    ``coverage``/``risk`` it gives there, ``max_view_std`` and the input-quality limits).
    ``logit_adjustment`` (optional) records the offsets already folded into ``model``'s output
    bias (:mod:`derm_exp.training.logit_adjustment`: ``tau``, ``training_prior``, ``offsets``).
    """

    model: dict[str, torch.Tensor]
    weights: Literal["raw", "ema"]
    epoch: int
    best: dict[str, Any]
    temperature: NotRequired[float]
    abstention: NotRequired[dict[str, Any]]
    logit_adjustment: NotRequired[dict[str, Any]]


class LatestCheckpoint(CheckpointMeta):
    """``checkpoint_latest.pt``: the state after the last completed epoch, enough to resume
    exactly (raw and EMA weights, optimizer and scaler state, the training stage, early-stopping
    and time-budget counters, the metric history and the RNG states). ``fitted_schedule``
    (optional; absent in older files): the LR schedule's length when the time budget fitted it
    shorter (:class:`derm_exp.training.budget_fit.FittedSchedule` as a dict), else None."""

    model: dict[str, torch.Tensor]
    ema: dict[str, Any] | None
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    stage: int
    epoch: int
    best: dict[str, Any]
    stale_epochs: int
    elapsed: float
    history: dict[str, list[float]]
    rng: dict[str, Any]
    fitted_schedule: NotRequired[dict[str, Any] | None]


# Resume needs all of these; checkpoint_best.pt lacks most of them.
_NOT_NEEDED = ("format", "kind", "metadata_encoding", "fitted_schedule")
LATEST_KEYS = tuple(k for k in LatestCheckpoint.__annotations__ if k not in _NOT_NEEDED)


def checkpoint_meta(
    *,
    config: Mapping[str, Any],
    choices: Mapping[str, str],
    classes: list[str],
    data_config: Mapping[str, Any],
    data_fingerprint: str,
    run_id: str | None = None,
    metadata_encoding: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata part every checkpoint of a run shares (``kind`` is set by the writers);
    ``config`` must be the resolved, redacted config as a plain dict."""
    meta: dict[str, Any] = {
        "format": FORMAT,
        "config": dict(config),
        "choices": {str(k): str(v) for k, v in choices.items()},
        "classes": list(classes),
        "data_config": dict(data_config),
        "data_fingerprint": str(data_fingerprint),
        "run_id": run_id,
    }
    if metadata_encoding:  # image-only checkpoints stay exactly as before
        meta["metadata_encoding"] = dict(metadata_encoding)
    return meta


@dataclass(frozen=True)
class CheckpointMetadata:
    """What readers (loading, ensembles, model sources, the registry) use of a checkpoint."""

    path: Path | None
    version: int
    kind: str
    config: dict[str, Any]
    choices: dict[str, str]
    classes: list[str]
    data_config: dict[str, Any]
    data_fingerprint: str | None
    run_id: str | None
    weights: str
    epoch: int | None
    best: dict[str, Any] | None
    temperature: float
    abstention: dict[str, Any] | None = None
    metadata_encoding: dict[str, Any] | None = None

    @property
    def monitor(self) -> str | None:
        """The validation metric the checkpoint was selected on (``trainer.monitor``)."""
        monitor = (self.config.get("trainer") or {}).get("monitor")
        return str(monitor) if monitor else None


def checkpoint_metadata(
    ck: Mapping[str, Any], path: str | Path | None = None
) -> CheckpointMetadata:
    """The metadata of a loaded checkpoint (:func:`load_checkpoint`, so in the current format);
    :class:`CheckpointError` when it is no derm_exp checkpoint (e.g. a plain state_dict)."""
    where = f"{path} is" if path is not None else "this is"
    missing = [k for k in (*_META_KEYS, "model") if k not in ck] if isinstance(ck, Mapping) else []
    if not isinstance(ck, Mapping) or missing:
        detail = f"missing {', '.join(missing)}" if missing else f"a {type(ck).__name__}"
        raise CheckpointError(
            f"{where} not a derm_exp checkpoint ({detail}); use a checkpoint_best.pt or "
            "checkpoint_latest.pt written by derm_exp.train"
        )
    best = ck.get("best") or None
    return CheckpointMetadata(
        path=None if path is None else Path(path),
        version=_version(ck, path),
        kind=str(ck.get("kind", "best")),
        config=dict(ck["config"]),
        choices=dict(ck.get("choices") or {}),
        classes=list(ck["classes"]),
        data_config=dict(ck["data_config"]),
        data_fingerprint=ck.get("data_fingerprint"),
        run_id=str(ck["run_id"]) if ck.get("run_id") else None,
        weights=str(ck.get("weights", (best or {}).get("weights", "raw"))),
        epoch=int(ck["epoch"]) if ck.get("epoch") is not None else None,
        best=dict(best) if best else None,
        temperature=float(ck.get("temperature", 1.0)),
        abstention=dict(ck["abstention"]) if ck.get("abstention") else None,
        metadata_encoding=dict(ck["metadata_encoding"]) if ck.get("metadata_encoding") else None,
    )


# ---------------------------------------------------------------------------------------------
# Loading: format check and migration


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A derm_exp checkpoint comes back in the current format (older versions migrated, a newer
    one refused); any other dict (a plain state_dict, ...) comes back as stored: readers check
    it with :func:`checkpoint_metadata`. ``mmap=True`` maps the tensors instead of reading them
    (cheap when only the metadata is needed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            " (only files written by derm_exp / plain state_dicts are accepted)"
        ) from exc
    if not isinstance(ck, dict) or not _is_derm_exp(ck):
        return ck
    return migrate(ck, path)


def _is_derm_exp(ck: Mapping[str, Any]) -> bool:
    return "format" in ck or any(k in ck for k in _META_KEYS)


def _version(ck: Mapping[str, Any], path: str | Path | None) -> int:
    """The schema version of ``ck``: 1 without a ``format`` key (files from before it)."""
    fmt = ck.get("format")
    if fmt is None:
        return 1
    match = _FORMAT.match(str(fmt))
    if match is None:
        raise CheckpointError(
            f"{path or 'the checkpoint'} is not a derm_exp checkpoint (format {fmt!r}, expected "
            f"{FORMAT_NAME}/<version>)"
        )
    return int(match["version"])


def migrate(ck: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """``ck`` in the current format: older versions upgraded step by step, the current one as
    is; :class:`CheckpointError` for a version newer than this code knows."""
    version = _version(ck, path)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path or 'the checkpoint'} was written by a newer derm_exp (format {version}; this "
            f"version reads up to {FORMAT_VERSION}); upgrade derm_exp to load it"
        )
    while version < FORMAT_VERSION:
        ck = _MIGRATIONS[version](ck)
        version += 1
    return ck


def _v1_to_v2(ck: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: record the group options (derived from the config, as for a run started
    without Hydra), the kind (a latest checkpoint has an optimizer state) and ``run_id``; align
    the history's per-weights lists with its epochs."""
    config = ck.get("config") or {}
    out = {
        **ck,
        "format": f"{FORMAT_NAME}/2",
        "kind": ck.get("kind") or ("latest" if "optimizer" in ck else "best"),
        "choices": dict(ck.get("choices") or (derive_choices(config) if config else {})),
        "run_id": ck.get("run_id"),
    }
    if isinstance(ck.get("history"), dict):
        out["history"] = _aligned_history(ck["history"])
    return out


def _aligned_history(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """Version 1 histories hold ``val_raw/<m>`` / ``val_ema/<m>`` only for the epochs where
    those weights were not the selected ones (``val/uses_ema``) when the trainer did not log
    them otherwise: fill the selected epochs from ``val/<m>``, one value per epoch in every list.
    """
    flags = history.get("val/uses_ema")
    if not flags:
        return history
    out = dict(history)
    for weights, ema in (("val_raw/", False), ("val_ema/", True)):
        selected = [(f == 1) == ema for f in flags]
        for key in [k for k in history if k.startswith(weights)]:
            values, chosen = list(history[key]), history.get("val/" + key.split("/", 1)[1])
            if len(values) == len(flags) or chosen is None or len(chosen) != len(flags):
                continue
            if len(values) == selected.count(False):
                rest = iter(values)
                out[key] = [
                    float(c) if s else next(rest) for s, c in zip(selected, chosen, strict=True)
                ]
    return out


_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
