"""An ensemble of trained classifiers: one predictor over several members.

Research and education only: not a medical device; never use it for diagnosis.

Members (:mod:`derm_exp.inference.members`) are registered model versions, MLflow run ids or
checkpoint paths; every member is a :class:`SkinLesionPredictor` (its own preprocessing,
temperature and optional TTA views batched in one forward). Their probabilities are combined
and their uncertainty measured as :mod:`derm_exp.inference.aggregation` describes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from derm_exp.errors import PredictionInputError, RegistryError
from derm_exp.inference.abstention import AbstentionPolicy
from derm_exp.inference.aggregation import (
    DEFAULT_TAU,
    MEMBER_AGGREGATIONS,
    aggregate,
    check_aggregation,
    metric_weights,
    uncertainty,
)
from derm_exp.inference.image_input import ImageInput, as_image_list, to_rgb_image
from derm_exp.inference.input_quality import quality_reasons
from derm_exp.inference.members import (
    DEFAULT_RANK_BY,
    Member,
    check_compatible,
    lower_is_better,
    member_from_checkpoint,
    resolve_member,
    select_members,
)
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.inference.results import DISCLAIMER, prediction_result, tta_info
from derm_exp.inference.tta import TTAPreset, resolve_preset

# One patient-metadata dict (age, sex, localization) or None per image; None: no metadata.
Metadata = Sequence[Mapping[str, Any] | None] | None

log = logging.getLogger(__name__)

# The ensemble's uncertainty measures in each prediction (derm_exp.inference.aggregation).
UNCERTAINTY_KEYS = ("std", "entropy", "mutual_information", "disagreement")


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
# The predictor


class EnsemblePredictor:
    """Class probabilities and uncertainty from several trained classifiers.

    Images are decoded once per batch; each member applies its own preprocessing (members may
    differ in backbone and input size) and, with TTA, runs all views in one forward.
    ``abstention`` decides ``decision``/``reasons`` (:mod:`derm_exp.inference.abstention`:
    the members' mean threshold, ensemble disagreement, the input-quality gate).
    """

    def __init__(
        self,
        members: Sequence[Member],
        predictors: Sequence[SkinLesionPredictor],
        aggregation: str = "mean",
        weights: Sequence[float] | None = None,
    ) -> None:
        check_compatible(members)
        check_aggregation(aggregation, MEMBER_AGGREGATIONS)
        if weights is not None and len(weights) != len(members):
            raise PredictionInputError(f"{len(weights)} weights for {len(members)} members")
        self.members = list(members)
        self.predictors = list(predictors)
        self.aggregation = aggregation
        n = len(members)
        w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.classes = list(members[0].classes)
        self.abstention = AbstentionPolicy.for_ensemble([p.abstention for p in self.predictors])

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
        **backend: Any,
    ) -> EnsemblePredictor:
        """Load every member's network; for ``weighted_mean`` derive weights from ``rank_by``.

        ``amp``, ``compile`` and the ``backend`` options (``backend``, ``backend_threads``,
        ``quantize``) apply to every member (see :class:`SkinLesionPredictor`)."""
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
                m.checkpoint,
                device=device,
                calibrate=calibrate,
                amp=amp,
                compile=compile,
                **backend,
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
        self,
        images: Sequence[ImageInput],
        batch_size: int,
        preset: TTAPreset,
        progress: bool,
        metadata: Metadata = None,
    ) -> Iterator[tuple[int, np.ndarray, list[list[str]]]]:
        """Yield ``(start, member probabilities (M, B, C), input-quality reasons per image)``
        per batch of images (the gate checks the decoded images, before any resizing).
        ``metadata`` (one dict or None per image) reaches the metadata-fusion members, each
        encoding it with its own stored encoder; image-only members ignore it."""
        if metadata is not None and len(metadata) != len(images):
            raise PredictionInputError(f"{len(metadata)} metadata entries for {len(images)} images")
        if batch_size < 1:
            raise PredictionInputError(f"batch_size={batch_size} must be >= 1")
        bar = tqdm(
            total=len(images), desc="ensemble", unit="img", disable=None if progress else True
        )
        for start in range(0, len(images), batch_size):
            pil = [to_rgb_image(x) for x in images[start : start + batch_size]]
            quality = [quality_reasons(img, self.abstention.quality) for img in pil]
            cache: dict[str, torch.Tensor] = {}
            out = []
            records = None if metadata is None else list(metadata[start : start + batch_size])
            for predictor in self.predictors:
                key = json.dumps(predictor.data_config, sort_keys=True, default=str)
                if key not in cache:  # members with the same preprocessing share the tensor
                    cache[key] = torch.stack([predictor.transform(img) for img in pil])
                meta = predictor.encode_metadata(records, len(pil)) if records else None
                probs, _ = predictor.probabilities(cache[key], preset, meta)
                out.append(probs)
            bar.update(len(pil))
            yield start, np.stack(out), quality
        bar.close()

    def member_probabilities(
        self,
        images: Sequence[ImageInput] | ImageInput,
        tta: str | TTAPreset | None = None,
        batch_size: int = 32,
        progress: bool = False,
        metadata: Metadata = None,
    ) -> np.ndarray:
        """Every member's probabilities (M, N, C) (TTA views aggregated per member)."""
        return self._scored(images, tta, batch_size, progress, metadata)[0]

    def _scored(
        self,
        images: Sequence[ImageInput] | ImageInput,
        tta: str | TTAPreset | None,
        batch_size: int,
        progress: bool,
        metadata: Metadata = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Member probabilities (M, N, C) and each image's input-quality reasons."""
        images = as_image_list(images)
        preset = resolve_preset(tta)
        out = np.empty((len(self.members), len(images), len(self.classes)), dtype=np.float64)
        quality: list[list[str]] = []
        batches = self._batches(images, batch_size, preset, progress, metadata)
        for start, probs, reasons in batches:
            out[:, start : start + probs.shape[1]] = probs
            quality += reasons
        return out, quality

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
        metadata: Metadata = None,
    ) -> EnsembleOutput:
        """Member and ensemble probabilities as arrays."""
        member = self.member_probabilities(images, tta, batch_size, progress, metadata)
        return self.combine(member)

    def predict_proba(
        self,
        images: Sequence[ImageInput] | ImageInput,
        batch_size: int = 32,
        metadata: Metadata = None,
    ) -> np.ndarray:
        """Ensemble probabilities (N, C), columns in ``self.classes`` order."""
        return self.predict_arrays(images, batch_size=batch_size, metadata=metadata).probs

    def predict(
        self,
        images: Sequence[ImageInput] | ImageInput,
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
        progress: bool = False,
        metadata: Metadata = None,
    ) -> list[dict[str, Any]]:
        """One dict per image: the single-model predictor's keys plus the ensemble's
        uncertainty (``std``, ``entropy``, ``mutual_information``, ``disagreement``),
        ``members``, ``decision``/``reasons``/``abstention`` and ``disclaimer``."""
        preset = resolve_preset(tta)
        member_probs, quality = self._scored(images, preset, batch_size, progress, metadata)
        out = self.combine(member_probs)
        unc = out.uncertainty()
        results = []
        for i, probs in enumerate(out.probs):
            calibrated = all(p.calibrate for p in self.predictors)
            result = prediction_result(probs, self.classes, calibrated=calibrated, temperature=None)
            result.update({key: float(unc[key][i]) for key in UNCERTAINTY_KEYS})
            result["member_predictions"] = {
                m.name: self.classes[int(out.member_probs[j, i].argmax())]
                for j, m in enumerate(self.members)
            }
            result["ensemble"] = {
                "aggregation": self.aggregation,
                "members": len(self.members),
                "weights": [float(w) for w in out.weights],
            }
            if preset.views != ("identity",):
                result["tta"] = tta_info(preset)
            result.update(self.decide(result, quality[i]))
            result["disclaimer"] = DISCLAIMER
            results.append(result)
        return results

    def decide(self, result: Mapping[str, Any], quality: Sequence[str] | None) -> dict[str, Any]:
        """``decision``, ``reasons`` and ``abstention`` of one ensemble prediction dict."""
        return self.abstention.decide(
            result["confidence"],
            quality=quality,
            disagreement=result["disagreement"],
            member_std=result["std"],
        )

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
        progress: bool = False,
        metadata: Metadata = None,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` under the name and signature of ``SkinLesionPredictor.predict_batch``."""
        return self.predict(images, batch_size, tta, progress, metadata)

    def predict_with_tta(
        self, images: Sequence[ImageInput] | ImageInput, mode: str = "medium", batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """:meth:`predict` with every member averaging the views of ``conf/tta/<mode>.yaml``."""
        return self.predict(images, batch_size, tta=mode)


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
