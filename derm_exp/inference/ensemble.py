"""Ensembles of trained classifiers: aggregation, uncertainty, and a predictor over members.

Research and education only: not a medical device; never use it for diagnosis.

Members are registered model versions (``models:/derm-classifier/3``, ``...@seed-7``), MLflow
run ids or checkpoint paths; every member is a :class:`SkinLesionPredictor` (its own
preprocessing, temperature and optional TTA views batched in one forward). Members must share
their class list and their data fingerprint (the same train/val/test split), else
:class:`~derm_exp.errors.RegistryError` names the members and their values.

Aggregation of member probabilities ``P_i`` (N, C), i = 1..M:

* ``mean``: ``sum_i P_i / M``;
* ``weighted_mean``: ``sum_i w_i P_i`` with ``w = softmax((m_i - max_j m_j) / tau)``, ``m_i``
  the member's validation metric ``rank_by`` (negated for losses). A member ``tau`` behind the
  best gets ``e^-1 = 0.37`` times the best's weight; ``tau -> inf`` gives the mean. With the
  default ``tau = 0.05``, 5 points of validation balanced accuracy cost a factor e;
* ``geometric_mean``: ``prod_i P_i^(1/M)``, renormalised to sum to 1.

Uncertainty per image, with ``p`` the ensemble output and ``k = argmax p``:

* ``confidence`` = ``p[k]``;
* ``std``: standard deviation (population, over members) of ``P_i[k]``;
* ``entropy``: predictive entropy ``H(p)`` in nats;
* ``mutual_information``: ``H(sum_i w_i P_i) - sum_i w_i H(P_i)`` (BALD), with the aggregation's
  weights (uniform for ``mean`` and ``geometric_mean``: for the latter the arithmetic mixture is
  used so the value is a true, non-negative mutual information);
* ``disagreement``: share of members whose own argmax differs from ``k``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from derm_exp.data.metadata import CLASS_DESCRIPTIONS
from derm_exp.errors import PredictionInputError, RegistryError
from derm_exp.inference.predictor import (
    DISCLAIMER,
    ImageInput,
    SkinLesionPredictor,
    normalized_entropy,
    to_rgb_image,
)
from derm_exp.inference.predictor import _as_list as _as_list  # same input conventions
from derm_exp.inference.tta import TTAPreset

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "weighted_mean", "geometric_mean")
DEFAULT_RANK_BY = "val_balanced_accuracy"
DEFAULT_TAU = 0.05
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Math on fixed arrays


def lower_is_better(metric: str) -> bool:
    """Losses and calibration errors rank ascending."""
    return any(s in metric for s in ("loss", "nll", "ece", "brier"))


def metric_weights(
    values: Sequence[float], tau: float = DEFAULT_TAU, higher_is_better: bool = True
) -> np.ndarray:
    """``softmax((m_i - max m) / tau)`` (of ``-m`` for losses): weights that sum to 1."""
    if tau <= 0:
        raise RegistryError(f"tau must be > 0, got {tau}")
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 1 or m.size == 0 or not np.isfinite(m).all():
        raise RegistryError(f"weighted_mean needs one finite metric per member, got {values}")
    z = (m if higher_is_better else -m) / tau
    w = np.exp(z - z.max())
    return w / w.sum()


def aggregate(
    member_probs: np.ndarray, aggregation: str = "mean", weights: Sequence[float] | None = None
) -> np.ndarray:
    """Combine member probabilities (M, N, C) into the ensemble's (N, C) distribution."""
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member probabilities must be (M, N, C), got shape {p.shape}")
    if aggregation == "mean":
        out = p.mean(0)
    elif aggregation == "weighted_mean":
        if weights is None:
            raise ValueError("weighted_mean needs weights")
        w = np.asarray(weights, dtype=np.float64)
        out = np.tensordot(w / w.sum(), p, axes=1)
    elif aggregation == "geometric_mean":
        out = np.exp(np.log(np.clip(p, _EPS, 1.0)).mean(0))
    else:
        raise PredictionInputError(
            f"aggregation={aggregation!r}: choose one of {', '.join(AGGREGATIONS)}"
        )
    return out / out.sum(-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def uncertainty(
    member_probs: np.ndarray, probs: np.ndarray, weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Per-image uncertainty of an ensemble (see the module docstring), each of shape (N,)."""
    p_m = np.asarray(member_probs, dtype=np.float64)
    n_members = p_m.shape[0]
    w = np.full(n_members, 1.0 / n_members) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    k = np.asarray(probs).argmax(-1)
    rows = np.arange(p_m.shape[1])
    on_k = p_m[:, rows, k]  # (M, N): each member's probability of the ensemble's class
    mixture = np.tensordot(w, p_m, axes=1)
    return {
        "confidence": np.asarray(probs, dtype=np.float64)[rows, k],
        "std": on_k.std(0),
        "entropy": entropy(probs),
        "mutual_information": np.maximum(entropy(mixture) - w @ entropy(p_m), 0.0),
        "disagreement": (p_m.argmax(-1) != k).mean(0),
    }


@dataclass
class EnsembleOutput:
    """Member probabilities (M, N, C), their weights (M,) and the ensemble's (N, C)."""

    member_probs: np.ndarray
    probs: np.ndarray
    weights: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(-1)

    def uncertainty(self) -> dict[str, np.ndarray]:
        return uncertainty(self.member_probs, self.probs, self.weights)


# ---------------------------------------------------------------------------------------------
# Members


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


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata, memory-mapped (the weights are not read)."""
    from derm_exp.training.checkpoint import CheckpointError

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(ck, dict) or "classes" not in ck:
        raise CheckpointError(f"{path} is not a derm_exp checkpoint (no class list)")
    return ck


def member_from_checkpoint(
    path: str | os.PathLike, name: str | None = None, run_id: str | None = None
) -> Member:
    """A member from a local ``checkpoint_best.pt``; its validation metric is the
    selection metric stored in the checkpoint (``best.value`` of ``trainer.monitor``)."""
    path = Path(path)
    ck = _checkpoint_meta(path)
    metrics = {}
    monitor = (ck.get("config") or {}).get("trainer", {}).get("monitor")
    if monitor and ck.get("best"):
        metrics[str(monitor).replace("/", "_")] = float(ck["best"]["value"])
    return Member(
        name=name or str(path),
        checkpoint=path,
        classes=list(ck["classes"]),
        data_fingerprint=ck.get("data_fingerprint"),
        run_id=run_id or ck.get("run_id"),
        val_metrics=metrics,
    )


def member_from_version(version: Any, download_dir: str | os.PathLike | None = None) -> Member:
    """A member from a registered model version (its checkpoint read in place or downloaded)."""
    from derm_exp.tracking.registry import VAL_PREFIX, checkpoint_of, model_dir

    dst = (
        None if download_dir is None else Path(download_dir) / f"{version.name}-v{version.version}"
    )
    path = checkpoint_of(model_dir(version, dst))
    member = member_from_checkpoint(path, f"{version.name}/{version.version}", version.run_id)
    member.model_name, member.model_version = version.name, str(version.version)
    member.tags = dict(version.tags)
    member.val_metrics.update(
        {k: float(v) for k, v in version.tags.items() if k.startswith(VAL_PREFIX)}
    )
    return member


def resolve_member(
    ref: str | os.PathLike,
    download_dir: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
) -> Member:
    """A member from a ``models:/`` URI, an MLflow run id or a checkpoint path/folder.

    Registry and runs are looked up in ``tracking_uri`` (default: MLflow's current tracking URI).
    """
    import mlflow

    from derm_exp.inference.sources import resolve_source
    from derm_exp.tracking.registry import resolve_version

    text = str(ref)
    if text.startswith("models:/"):
        return member_from_version(resolve_version(text), download_dir)
    source = resolve_source(text, tracking_uri or mlflow.get_tracking_uri())
    return member_from_checkpoint(source.checkpoint, text, source.run_id)


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
# The predictor


class EnsemblePredictor:
    """Class probabilities and uncertainty from several trained classifiers.

    Images are decoded once per batch; each member applies its own preprocessing (members may
    differ in backbone and input size) and, with TTA, runs all views in one forward.
    """

    def __init__(
        self,
        members: Sequence[Member],
        predictors: Sequence[SkinLesionPredictor],
        aggregation: str = "mean",
        weights: Sequence[float] | None = None,
    ) -> None:
        check_compatible(members)
        if aggregation not in AGGREGATIONS:
            raise PredictionInputError(
                f"aggregation={aggregation!r}: choose one of {', '.join(AGGREGATIONS)}"
            )
        if weights is not None and len(weights) != len(members):
            raise PredictionInputError(f"{len(weights)} weights for {len(members)} members")
        self.members = list(members)
        self.predictors = list(predictors)
        self.aggregation = aggregation
        n = len(members)
        w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.classes = list(members[0].classes)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_members(
        cls,
        members: Sequence[Member],
        aggregation: str = "mean",
        rank_by: str = DEFAULT_RANK_BY,
        tau: float = DEFAULT_TAU,
        weights: Sequence[float] | None = None,
        device: str = "auto",
        calibrate: bool = True,
        amp: str = "off",
        compile: bool = False,
    ) -> EnsemblePredictor:
        """Load every member's network; for ``weighted_mean`` derive weights from ``rank_by``.

        ``amp`` and ``compile`` apply to every member (see :class:`SkinLesionPredictor`)."""
        check_compatible(members)
        if aggregation == "weighted_mean" and weights is None:
            key = rank_by.replace("/", "_")
            missing = [m.name for m in members if key not in m.val_metrics]
            if missing:
                raise RegistryError(
                    f"weighted_mean ranks by {key}, which members {', '.join(missing)} do not "
                    "have; choose rank_by among their validation metrics or aggregation=mean"
                )
            weights = metric_weights(
                [m.val_metrics[key] for m in members], tau, not lower_is_better(key)
            ).tolist()
        predictors = [
            SkinLesionPredictor.from_checkpoint(
                m.checkpoint, device=device, calibrate=calibrate, amp=amp, compile=compile
            )
            for m in members
        ]
        return cls(members, predictors, aggregation, weights)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | os.PathLike],
        names: Sequence[str] | None = None,
        aggregation: str = "mean",
        weights: Sequence[float] | None = None,
        device: str = "auto",
        calibrate: bool = True,
    ) -> EnsemblePredictor:
        """From local checkpoint files (e.g. the artifacts of a registered ensemble)."""
        names = list(names) if names is not None else [str(p) for p in paths]
        members = [member_from_checkpoint(p, n) for p, n in zip(paths, names, strict=True)]
        if aggregation == "weighted_mean" and weights is None:
            raise PredictionInputError("weighted_mean from checkpoints needs explicit weights")
        return cls.from_members(
            members, aggregation, weights=weights, device=device, calibrate=calibrate
        )

    @classmethod
    def from_registry(
        cls,
        name: str = "derm-classifier",
        *,
        models: Sequence[str] | None = None,
        group: str | None = None,
        tags: Mapping[str, Any] | None = None,
        filter: str | None = None,
        top_k: int | None = None,
        rank_by: str = DEFAULT_RANK_BY,
        aggregation: str = "mean",
        tau: float = DEFAULT_TAU,
        device: str = "auto",
        calibrate: bool = True,
        download_dir: str | os.PathLike | None = None,
        tracking_uri: str | None = None,
    ) -> EnsemblePredictor:
        """Members chosen in the registry (see :func:`select_members`), then loaded.

        ``tracking_uri`` (e.g. ``sqlite:///<project>/mlflow.db``) is set as MLflow's tracking
        URI; by default MLflow's current one is used.
        """
        _use_tracking_uri(tracking_uri)
        members = select_members(
            name,
            models=models,
            group=group,
            tags=tags,
            filter=filter,
            top_k=top_k,
            rank_by=rank_by,
            download_dir=download_dir,
        )
        return cls.from_members(
            members, aggregation, rank_by, tau, device=device, calibrate=calibrate
        )

    # -- prediction ---------------------------------------------------------------------------
    def _batches(
        self, images: Sequence[ImageInput], batch_size: int, preset: TTAPreset, progress: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, member probabilities (M, B, C))`` per batch of images."""
        if batch_size < 1:
            raise PredictionInputError(f"batch_size={batch_size} must be >= 1")
        bar = tqdm(
            total=len(images), desc="ensemble", unit="img", disable=None if progress else True
        )
        for start in range(0, len(images), batch_size):
            pil = [to_rgb_image(x) for x in images[start : start + batch_size]]
            cache: dict[str, torch.Tensor] = {}
            out = []
            for predictor in self.predictors:
                key = json.dumps(predictor.data_config, sort_keys=True, default=str)
                if key not in cache:  # members with the same preprocessing share the tensor
                    cache[key] = torch.stack([predictor.transform(img) for img in pil])
                probs, _ = predictor.probabilities(cache[key], preset)
                out.append(probs)
            bar.update(len(pil))
            yield start, np.stack(out)
        bar.close()

    def member_probabilities(
        self,
        images: Sequence[ImageInput] | ImageInput,
        tta: str | TTAPreset | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> np.ndarray:
        """Every member's probabilities (M, N, C) (TTA views aggregated per member)."""
        images = _as_list(images)
        preset = SkinLesionPredictor.tta_preset(tta)
        out = np.empty((len(self.members), len(images), len(self.classes)), dtype=np.float64)
        for start, probs in self._batches(images, batch_size, preset, progress):
            out[:, start : start + probs.shape[1]] = probs
        return out

    def combine(self, member_probs: np.ndarray) -> EnsembleOutput:
        """Aggregate precomputed member probabilities (M, N, C)."""
        weights = self.weights if self.aggregation == "weighted_mean" else None
        probs = aggregate(member_probs, self.aggregation, weights)
        return EnsembleOutput(
            np.asarray(member_probs),
            probs,
            self.weights
            if weights is not None
            else np.full(len(self.members), 1.0 / len(self.members)),
        )

    def predict_arrays(
        self,
        images: Sequence[ImageInput] | ImageInput,
        tta: str | TTAPreset | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> EnsembleOutput:
        """Member and ensemble probabilities as arrays."""
        return self.combine(self.member_probabilities(images, tta, batch_size, progress))

    def predict_proba(
        self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 32
    ) -> np.ndarray:
        """Ensemble probabilities (N, C), columns in ``self.classes`` order."""
        return self.predict_arrays(images, batch_size=batch_size).probs

    def predict(
        self,
        images: Sequence[ImageInput] | ImageInput,
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """One dict per image: the single-model predictor's keys plus the ensemble's
        uncertainty (``std``, ``entropy``, ``mutual_information``, ``disagreement``),
        ``members`` and ``disclaimer``."""
        preset = SkinLesionPredictor.tta_preset(tta)
        out = self.predict_arrays(images, preset, batch_size, progress)
        unc = out.uncertainty()
        results = []
        for i, probs in enumerate(out.probs):
            k = int(probs.argmax())
            cls = self.classes[k]
            result: dict[str, Any] = {
                "predicted_class": cls,
                "predicted_class_description": CLASS_DESCRIPTIONS.get(cls, cls),
                "confidence": float(probs[k]),
                "probabilities": {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
                "uncertainty": float(normalized_entropy(probs)),
                "calibrated": all(p.calibrate for p in self.predictors),
                **{
                    key: float(unc[key][i])
                    for key in ("std", "entropy", "mutual_information", "disagreement")
                },
                "member_predictions": {
                    m.name: self.classes[int(out.member_probs[j, i].argmax())]
                    for j, m in enumerate(self.members)
                },
                "ensemble": {
                    "aggregation": self.aggregation,
                    "members": len(self.members),
                    "weights": [float(w) for w in out.weights],
                },
            }
            if preset.views != ("identity",):
                result["tta"] = {
                    "mode": preset.mode,
                    "views": list(preset.views),
                    "aggregation": preset.aggregation,
                }
            result["disclaimer"] = DISCLAIMER
            results.append(result)
        return results

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` under the name and signature of ``SkinLesionPredictor.predict_batch``."""
        return self.predict(images, batch_size, tta, progress)

    def predict_with_tta(
        self, images: Sequence[ImageInput] | ImageInput, mode: str = "medium", batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """:meth:`predict` with every member averaging the views of ``conf/tta/<mode>.yaml``."""
        return self.predict(images, batch_size, tta=mode)


def select_members(
    name: str = "derm-classifier",
    *,
    models: Sequence[str] | None = None,
    group: str | None = None,
    tags: Mapping[str, Any] | None = None,
    filter: str | None = None,
    top_k: int | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    download_dir: str | os.PathLike | None = None,
) -> list[Member]:
    """Members from explicit ``models`` (URIs, run ids, checkpoints) or a registry query.

    The query is ``name`` AND ``group`` AND every ``tags`` item AND ``filter`` (MLflow
    ``search_model_versions`` syntax, e.g. ``tags.head = 'ACRNNHead'``); ``top_k`` then keeps
    the best by the validation metric ``rank_by``. Compatibility is checked.
    """
    from derm_exp.tracking.registry import build_filter, search_versions
    from derm_exp.tracking.registry import top_k as best_versions

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


def load_ensemble_predictor(
    models: Sequence[str | os.PathLike],
    aggregation: str = "mean",
    rank_by: str = DEFAULT_RANK_BY,
    tau: float = DEFAULT_TAU,
    device: str = "auto",
    calibrate: bool = True,
    tracking_uri: str | None = None,
) -> EnsemblePredictor:
    """An ensemble of ``models``: ``models:/`` URIs, MLflow run ids or checkpoint paths.

    Example: ``load_ensemble_predictor(["models:/derm-classifier@seed-7",
    "models:/derm-classifier/3"], aggregation="geometric_mean").predict(["img.jpg"])``.
    """
    _use_tracking_uri(tracking_uri)
    members = [resolve_member(m) for m in models]
    return EnsemblePredictor.from_members(
        members, aggregation, rank_by, tau, device=device, calibrate=calibrate
    )


def _use_tracking_uri(uri: str | None) -> None:
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)
