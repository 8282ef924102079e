"""Saliency maps of a batch: Grad-CAM, integrated gradients and the acrnn head's attention.

Built on captum (``LayerGradCam``, ``IntegratedGradients``) rather than the ``grad-cam``
package: captum needs only torch, while grad-cam imports OpenCV at top level and pulls in
opencv, scipy and ttach. Every map is (H, W) at the batch's resolution, float32 in [0, 1]:

* ``gradcam``: ReLU of the gradient-weighted channel sum of the last feature map (found by
  :func:`~derm_exp.explanations.target_layer.find_target_layer`), bilinearly upsampled, divided by
  its maximum (0 everywhere when no location raises the target's score).
* ``integrated_gradients``: |attribution| summed over colour channels, from a black-in-model-space
  (all-zero, i.e. the dataset-mean image) baseline in ``IG_STEPS`` steps, clipped at its 99th
  percentile and scaled to [0, 1].
* ``attention``: the ``acrnn`` head's own attention weights over the feature map, upsampled and
  divided by their maximum. It does not depend on the target class.

A metadata-fusion model is explained with the encoded patient metadata it predicted with
(``metadata``, (B, M)); without it, every image reads as "nothing known", as in prediction. The
maps stay maps over the image: the metadata is a fixed extra input of the forward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from derm_exp.explanations.errors import ExplanationError
from derm_exp.explanations.model_state import explaining
from derm_exp.explanations.target_layer import feature_source, find_target_layer

METHODS: tuple[str, ...] = ("gradcam", "integrated_gradients", "attention")
IG_STEPS = 32
IG_CLIP_PERCENTILE = 99.0
# One explanation at a time per process: each one hooks the model and flips its flags for the
# duration, so two threads (a web service's workers) explaining one model would see each other's.
_LOCK = threading.RLock()


def check_method(model: nn.Module, method: str) -> str:
    """``method`` when it is known and applies to ``model``; else :class:`ExplanationError`."""
    if method not in METHODS:
        raise ExplanationError(
            f"unknown explanation method={method!r}; choose one of {', '.join(METHODS)}"
        )
    if method == "attention" and not has_attention(model):
        head = type(getattr(model, "head", model)).__name__
        raise ExplanationError(
            f"method=attention needs a head with its own attention map (model.head=acrnn); this "
            f"model's head is {head}: use method=gradcam or method=integrated_gradients"
        )
    return method


def has_attention(model: nn.Module) -> bool:
    """Whether the model's head keeps an attention map (the acrnn head's ``last_attention``)."""
    return hasattr(getattr(model, "head", None), "last_attention")


def _normalise_max(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-negative maps divided by their own maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).clamp(0.0, 1.0)


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _extra(metadata: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
    """captum's ``additional_forward_args``: the metadata, when there is any."""
    return None if metadata is None else (metadata,)


def _targets(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None, metadata: torch.Tensor | None
) -> list[int]:
    """The given targets (checked), or the argmax class of each image."""
    n_classes = getattr(getattr(model, "head", None), "num_classes", None)
    if targets is None or n_classes is None:
        with torch.no_grad():
            logits = model(x) if metadata is None else model(x, metadata)
        n_classes = logits.shape[-1]
        if targets is None:
            return [int(i) for i in logits.argmax(-1).tolist()]
    out = [int(t) for t in targets]
    if len(out) != x.shape[0]:
        raise ExplanationError(f"{len(out)} targets for a batch of {x.shape[0]} images")
    bad = [t for t in out if not 0 <= t < n_classes]
    if bad:
        raise ExplanationError(f"target class index {bad[0]} out of range 0..{n_classes - 1}")
    return out


def gradcam(
    model: nn.Module, x: torch.Tensor, targets: list[int], metadata: torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) of ``targets`` at the last feature map."""
    from captum.attr import LayerGradCam

    _, layer = find_target_layer(model, (x.shape[-2], x.shape[-1]))
    cam = LayerGradCam(model, layer).attribute(
        x.clone().requires_grad_(True),
        target=targets,
        additional_forward_args=_extra(metadata),
        relu_attributions=True,
    )
    return _normalise_max(_upsample(cam[:, 0].detach().float(), x.shape[-2:]))


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, targets: list[int], metadata: torch.Tensor | None = None
) -> torch.Tensor:
    """Integrated-gradients maps (B, H, W) of ``targets`` (see the module docstring)."""
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(
        x.clone().requires_grad_(True),
        baselines=torch.zeros_like(x),
        target=targets,
        additional_forward_args=_extra(metadata),
        n_steps=IG_STEPS,
        internal_batch_size=max(IG_STEPS, x.shape[0]),
    )
    saliency = attr.detach().float().abs().sum(1)
    clip = torch.quantile(saliency.flatten(1), IG_CLIP_PERCENTILE / 100.0, dim=1)
    clipped = torch.minimum(saliency, clip[:, None, None])
    return _normalise_max(clipped)


def attention(
    model: nn.Module, x: torch.Tensor, metadata: torch.Tensor | None = None
) -> torch.Tensor:
    """The acrnn head's attention (B, H, W) over the feature map (after the metadata fusion,
    which is what the head attends over), upsampled."""
    with torch.no_grad():
        features = feature_source(model).forward_features(x)
        fusion = getattr(model, "fusion", None)
        head_input = features if fusion is None else fusion(features, metadata)
        _, weights = model.head(head_input, return_attention=True)
    h, w = features.shape[-2:]
    return _normalise_max(_upsample(weights.float().reshape(-1, h, w), x.shape[-2:]))


def explain_batch(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    metadata: torch.Tensor | None = None,
) -> np.ndarray:
    """(B, H, W) float32 maps in [0, 1] at the batch's resolution; targets default to the argmax
    class. ``batch``: preprocessed images (B, 3, H, W) as the model was validated on;
    ``metadata``: a metadata-fusion model's (B, M) encoded patient metadata. The model
    runs in fp32 eval mode and is left as it was (modes, ``requires_grad``, no hooks); calls are
    serialised by a process-wide lock, so threads may share one model."""
    check_method(model, method)
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ExplanationError(f"batch of shape {tuple(batch.shape)}: expected (B, 3, H, W)")
    with _LOCK, explaining(model):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = batch.detach().to(device, torch.float32)
        meta = _metadata_batch(model, metadata, x)
        if method == "attention":
            maps = attention(model, x, meta)
        else:
            classes = _targets(model, x, targets, meta)
            explain = gradcam if method == "gradcam" else integrated_gradients
            maps = explain(model, x, classes, meta)
    return maps.cpu().numpy().astype(np.float32)


def _metadata_batch(
    model: nn.Module, metadata: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor | None:
    """``metadata`` on the batch's device as fp32, checked against the batch; None for an
    image-only model (which has nothing to fuse it with)."""
    if metadata is None or getattr(model, "fusion", None) is None:
        return None
    if metadata.dim() != 2 or metadata.shape[0] != x.shape[0]:
        raise ExplanationError(
            f"metadata of shape {tuple(metadata.shape)} for a batch of {x.shape[0]} images: "
            "expected (B, M) encoded metadata"
        )
    return metadata.detach().to(x.device, torch.float32)
