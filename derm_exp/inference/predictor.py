"""Predict skin-lesion classes for images with a trained derm_exp model.

Research and education only; not a medical device. Do not use for diagnosis.

The network, its preprocessing (the validation transform it was trained with) and its class list
come from the checkpoint. Images are opened exactly like the training dataset opens them
(:func:`derm_exp.data.images.load_image`: EXIF orientation applied, any mode to 8-bit RGB,
transparency composited onto black), so a file gives the same probabilities here as in
evaluation. A metadata-fusion model also takes optional patient metadata per image
(``predict(image, metadata={"age": 55, "sex": "male", "localization": "back"})``), encoded by
the encoder stored in its checkpoint; without it an image counts as "nothing known". The model
is loaded once and runs under ``torch.inference_mode`` in channels-last
memory format; a batch of images (times its TTA views) goes through the network in one forward.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from derm_exp.data.errors import DataValidationError
from derm_exp.data.images import BadImageError
from derm_exp.data.transforms import build_eval_transform
from derm_exp.errors import ModelSourceError, PredictionInputError
from derm_exp.inference.abstention import AbstentionPolicy
from derm_exp.inference.backends import (
    check_backend,
    is_onnx_file,
    loaded_from_onnx,
    make_backend,
)
from derm_exp.inference.image_input import ImageInput, as_image_list, to_rgb_image
from derm_exp.inference.input_quality import quality_reasons
from derm_exp.inference.loading import LoadedModel, load_classifier
from derm_exp.inference.network_setup import compile_for_inference, predictor_precision
from derm_exp.inference.results import DISCLAIMER, SINGLE_VIEW, prediction_result
from derm_exp.inference.sources import ModelSource, resolve_source
from derm_exp.inference.tta import (
    TTAPreset,
    expand_views,
    resolve_preset,
    views_to_probabilities,
)
from derm_exp.runtime import resolve_device

log = logging.getLogger(__name__)


class SkinLesionPredictor:
    """Class probabilities for dermoscopy images from one trained classifier.

    ``calibrate=True`` divides the logits by the temperature fitted on the training run's
    validation split (stored in the checkpoint; 1.0 when it has none). ``amp`` runs the network
    under autocast: ``off`` (default: fp32, the exact numbers of ``derm_exp.evaluate``),
    ``bf16`` (faster on GPUs and on CPUs with AMX/AVX512-BF16; see BENCHMARKS.md), ``fp16``,
    or ``auto`` (bf16 on CUDA, fp32 elsewhere). ``compile=True`` runs the network through
    :func:`compile_for_inference` (falls back to eager, with a warning, if compilation fails).
    ``abstention`` (:class:`~derm_exp.inference.abstention.AbstentionPolicy`, from the
    checkpoint; assign ``abstention.with_overrides({...})`` to change it) decides each result's
    ``decision`` and ``reasons``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str | torch.device = "auto",
        calibrate: bool = True,
        source: ModelSource | None = None,
        amp: str = "off",
        compile: bool = False,
        backend: str = "torch",
        backend_threads: int | None = None,
        quantize: str | None = None,
        onnx_path: str | os.PathLike | None = None,
    ) -> None:
        self.backend_name = check_backend(backend, amp, compile)
        self.device = resolve_device(device) if isinstance(device, str) else device
        if self.backend_name == "onnxruntime":
            self.device = torch.device("cpu")  # ONNX Runtime's CPU provider
        self.precision = predictor_precision(amp, self.device)
        self.backend = make_backend(
            self.backend_name,
            loaded,
            device=self.device,
            precision=self.precision,
            compiler=compile_for_inference if compile else None,
            source=source,
            threads=backend_threads,
            quantize=quantize,
            onnx_path=onnx_path,
        )
        self.classes = list(loaded.classes)
        self.data_config = dict(loaded.data_config)
        self.transform = build_eval_transform(self.data_config)
        self.calibrate = bool(calibrate)
        self.temperature = float(loaded.temperature) if calibrate else 1.0
        self.checkpoint_path = loaded.checkpoint_path
        self.source = source
        self.abstention = AbstentionPolicy.from_checkpoint(getattr(loaded, "abstention", None))
        # A metadata-fusion model's patient-metadata encoder (None: image-only model).
        self.metadata_encoder = getattr(loaded, "metadata_encoder", None)
        self._warned_unused_metadata = False
        # int8 ONNX exports are approximate; predictions say so (result()["approximate"]).
        self.approximate = bool(self.backend.approximate)

    @property
    def model(self) -> torch.nn.Module | None:
        """The network as run (maybe compiled); None with backend=onnxruntime."""
        return getattr(self.backend, "model", None)

    @property
    def eager_model(self) -> torch.nn.Module | None:
        """The uncompiled network; None with backend=onnxruntime."""
        return getattr(self.backend, "eager_model", None)

    @property
    def compiled(self) -> bool:
        """Whether the network runs through ``torch.compile`` (False after a fallback)."""
        return self.model is not self.eager_model

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options: Any) -> SkinLesionPredictor:
        """From a ``checkpoint_best.pt`` (or a training output folder holding one); ``options``:
        those of :meth:`from_ref`."""
        if not Path(path).expanduser().exists():
            raise ModelSourceError(f"checkpoint not found: {path}")
        return cls.from_ref(str(path), **options)

    @classmethod
    def from_run(
        cls, run_id: str, tracking_uri: str | None = None, **options: Any
    ) -> SkinLesionPredictor:
        """From the ``checkpoints/checkpoint_best.pt`` artifact of MLflow run ``run_id``."""
        return cls.from_ref(run_id, tracking_uri, **options)

    @classmethod
    def from_registry(
        cls, uri: str, tracking_uri: str | None = None, **options: Any
    ) -> SkinLesionPredictor:
        """From a registered model version (``models:/NAME@alias`` or ``models:/NAME/3``)."""
        if not str(uri).startswith("models:/"):
            raise PredictionInputError(f"{uri!r} is not a models:/NAME@alias URI")
        return cls.from_ref(uri, tracking_uri, **options)

    @classmethod
    def from_ref(
        cls,
        ref: str,
        tracking_uri: str | None = None,
        device: str = "auto",
        calibrate: bool = True,
        amp: str = "off",
        compile: bool = False,
        backend: str = "torch",
        backend_threads: int | None = None,
        quantize: str | None = None,
    ) -> SkinLesionPredictor:
        """From any reference: checkpoint path, run id or ``models:/`` URI, or an ONNX file
        written by ``derm_exp.export`` (``backend=onnxruntime`` only).

        ``backend`` is ``torch`` or ``onnxruntime`` (:mod:`derm_exp.inference.backends`: which
        ONNX file is used, ``backend_threads``, ``quantize=int8``)."""
        check_backend(backend, amp, compile)
        device_ = resolve_device(device)
        predictor_precision(amp, device_)  # a bad value fails before the model is loaded
        options = {"backend_threads": backend_threads, "quantize": quantize}
        if is_onnx_file(ref):
            if backend != "onnxruntime":
                raise PredictionInputError(f"model={ref} is an ONNX file: use backend=onnxruntime")
            loaded = loaded_from_onnx(Path(ref).expanduser())
            return cls(
                loaded, device_, calibrate, None, amp, compile, backend, onnx_path=ref, **options
            )
        source = resolve_source(ref, tracking_uri)
        loaded = load_classifier(source.checkpoint, "cpu" if backend != "torch" else device_)
        return cls(loaded, device_, calibrate, source, amp, compile, backend, **options)

    # -- core ---------------------------------------------------------------------------------
    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image -> the normalised (3, H, W) tensor the network was validated on."""
        return self.transform(to_rgb_image(image))

    def encode_metadata(
        self, records: Sequence[Mapping[str, Any] | None] | None, n: int
    ) -> torch.Tensor | None:
        """(n, M) encoded metadata for one dict (or None) per image; None for an image-only
        model (given metadata is ignored, with one warning) or when ``records`` is None."""
        if records is None:
            return None
        records = list(records)
        if len(records) != n:
            raise PredictionInputError(f"{len(records)} metadata entries for {n} images")
        if self.metadata_encoder is None:
            if any(records) and not self._warned_unused_metadata:
                self._warned_unused_metadata = True
                log.warning("this model does not use patient metadata: the metadata is ignored")
            return None
        try:
            return torch.from_numpy(self.metadata_encoder.encode_records(records))
        except DataValidationError as exc:
            raise PredictionInputError(str(exc)) from None

    @torch.inference_mode()
    def logits(
        self,
        batch: torch.Tensor,
        views: Sequence[str] = ("identity",),
        metadata: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(V, B, C) logits of every view of a preprocessed batch (B, 3, H, W): one forward.
        ``metadata``: a metadata model's (B, M) encoded metadata (:meth:`encode_metadata`)."""
        # torch runs channels-last; ONNX Runtime takes NCHW (a channels-last batch is copied back)
        fmt = torch.channels_last if self.backend_name == "torch" else torch.contiguous_format
        x = batch.to(self.device).contiguous(memory_format=fmt)
        views = list(views)
        if views != ["identity"]:
            x = expand_views(x, views)
            metadata = None if metadata is None else metadata.repeat(len(views), 1)
        out = self._forward(x, metadata).float().cpu()
        return out.reshape(len(views), batch.shape[0], out.shape[-1])

    def _forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        """The backend's (N, C) logits (:mod:`derm_exp.inference.backends`)."""
        return self.backend(x) if metadata is None else self.backend(x, metadata)

    def probabilities(
        self,
        batch: torch.Tensor,
        preset: TTAPreset = SINGLE_VIEW,
        metadata: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(aggregated (B, C), per-view (V, B, C)) probabilities at the predictor's temperature."""
        logits = self.logits(batch, preset.views, metadata)
        per_view = torch.softmax(logits / self.temperature, -1).numpy()
        if logits.shape[0] == 1:  # same arithmetic as single-view evaluation
            return views_to_probabilities(logits[0], self.temperature), per_view
        return views_to_probabilities(logits, self.temperature, preset.aggregation), per_view

    def quality_reasons(self, image: ImageInput) -> list[str]:
        """The input-quality gate's reasons for one image, decoded, before resizing
        (:mod:`derm_exp.inference.input_quality`, limits from :attr:`abstention`)."""
        return quality_reasons(to_rgb_image(image), self.abstention.quality)

    def iter_predictions(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        preset: TTAPreset = SINGLE_VIEW,
        progress: bool = False,
        skip_unreadable: bool = False,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(index, probs (C,), per-view probs (V, C))`` per image, batch by batch.

        With ``skip_unreadable`` undecodable files are logged and left out instead of raising.
        ``metadata``: one dict (age, sex, localization; or None) per image.
        """
        for i, probs, per_view, _ in self.iter_scored(
            images, batch_size, preset, progress, skip_unreadable, metadata
        ):
            yield i, probs, per_view

    def iter_scored(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        preset: TTAPreset = SINGLE_VIEW,
        progress: bool = False,
        skip_unreadable: bool = False,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[str]]]:
        """:meth:`iter_predictions` plus each image's input-quality reasons (checked on the
        decoded image before it is resized)."""
        if batch_size < 1:
            raise PredictionInputError(f"batch_size={batch_size} must be >= 1")
        images = list(images)
        encoded = self.encode_metadata(metadata, len(images))
        bar = tqdm(
            total=len(images), desc="predict", unit="img", disable=None if progress else True
        )
        for start in range(0, len(images), batch_size):
            tensors, index, quality = [], [], []
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    rgb = to_rgb_image(images[i])
                    tensors.append(self.preprocess(rgb))
                    quality.append(quality_reasons(rgb, self.abstention.quality))
                    index.append(i)
                except BadImageError as exc:
                    if not skip_unreadable:
                        raise
                    log.warning("skipping %s", exc)
            if tensors:
                meta = None if encoded is None else encoded[index]
                probs, per_view = self.probabilities(torch.stack(tensors), preset, meta)
                for j, i in enumerate(index):
                    yield i, probs[j], per_view[:, j], quality[j]
            bar.update(min(batch_size, len(images) - start))
        bar.close()

    def result(
        self,
        probs: np.ndarray,
        per_view: np.ndarray | None = None,
        preset: TTAPreset = SINGLE_VIEW,
        quality: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The prediction dict for one image's probabilities (C,) (and per-view (V, C)).

        Keys: :func:`~derm_exp.inference.results.prediction_result`; ``decision``/``reasons``/
        ``abstention`` come from :attr:`abstention` (:mod:`derm_exp.inference.abstention`);
        ``quality`` is the image's input-quality reasons (None: not checked).
        """
        out = prediction_result(
            probs, self.classes, per_view, preset, self.calibrate, self.temperature
        )
        out.update(
            self.abstention.decide(out["confidence"], quality=quality, view_std=out.get("view_std"))
        )
        if self.approximate:
            out["approximate"] = True
        out["disclaimer"] = DISCLAIMER
        return out

    # -- public API ---------------------------------------------------------------------------
    def predict_proba(
        self,
        images: Sequence[ImageInput] | ImageInput,
        batch_size: int = 32,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> np.ndarray:
        """Class probabilities (N, C), columns in ``self.classes`` order; ``metadata``: one
        dict (or None) per image, for a metadata-fusion model."""
        images = as_image_list(images)
        out = np.empty((len(images), len(self.classes)), dtype=np.float32)
        for i, probs, _ in self.iter_predictions(images, batch_size, metadata=metadata):
            out[i] = probs
        return out

    def predict(
        self, image: ImageInput, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Prediction for one image (single pass): see :meth:`result` for the keys.
        ``metadata``: e.g. ``{"age": 55, "sex": "male", "localization": "back"}`` (any subset;
        a metadata-fusion model reads the rest as missing, an image-only model ignores it)."""
        return self.predict_batch([image], batch_size=1, metadata=[metadata])[0]

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        tta: str | TTAPreset | None = None,
        progress: bool = False,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Predictions for many images, ``batch_size`` images (x their views) per forward;
        ``metadata``: one dict (or None) per image."""
        preset = self.tta_preset(tta)
        found = self.iter_scored(
            as_image_list(images), batch_size, preset, progress, metadata=metadata
        )
        return [self.result(p, v, preset, q) for _, p, v, q in found]

    def predict_with_tta(
        self,
        image: ImageInput,
        mode: str = "medium",
        aggregation: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Prediction averaged over the views of ``conf/tta/<mode>.yaml`` (one forward).

        ``aggregation`` (mean | geometric_mean | max) defaults to the preset's; every
        aggregation is renormalised to a distribution. Adds ``view_std``: the standard
        deviation across views of the predicted class's probability.
        """
        preset = self.tta_preset(mode, aggregation)
        return self.predict_batch([image], tta=preset, metadata=[metadata])[0]

    @staticmethod
    def tta_preset(tta: str | TTAPreset | None, aggregation: str | None = None) -> TTAPreset:
        """The views/aggregation of a TTA mode name (``conf/tta/<mode>.yaml``), validated."""
        return resolve_preset(tta, aggregation)
