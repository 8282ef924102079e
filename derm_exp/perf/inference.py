"""Inference speed: forward throughput, single/batch latency, batched vs serial TTA views, and
the end-to-end predictor (JPEG file -> probabilities) and ensemble when they are available."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from derm_exp.data.metadata import CLASSES
from derm_exp.inference.tta import expand_views
from derm_exp.perf.timing import median, time_calls
from derm_exp.runtime import Precision

log = logging.getLogger(__name__)


def _forward(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> None:
    with torch.inference_mode(), precision.autocast(x.device):
        model(x)


def _input(n: int, image_size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, image_size, image_size, generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def first_call_seconds(
    model: torch.nn.Module, image_size: int, precision: Precision, device: torch.device
) -> float:
    """Seconds of the first forward of one image (for a compiled model: compilation)."""
    model.eval()
    x = _input(1, image_size, device)
    return median(time_calls(lambda: _forward(model, x, precision), device, 0, 1))


def model_latencies(
    model: torch.nn.Module,
    image_size: int,
    batch_size: int,
    views: Sequence[str],
    precision: Precision,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Network-only timings on preprocessed tensors (eval mode, inference_mode, channels_last).

    ``tta_batched_ms``: all views of one image in one forward (what derm_exp does);
    ``tta_serial_ms``: one forward per view (the naive way, for comparison).
    """
    model.eval()
    one, batch = _input(1, image_size, device), _input(batch_size, image_size, device)
    fwd = lambda x: lambda: _forward(model, x, precision)  # noqa: E731
    single = median(time_calls(fwd(one), device, warmup, repeats))
    batched = median(time_calls(fwd(batch), device, warmup, max(3, repeats // 3)))
    views = list(views)
    tta_input = expand_views(one, views)
    tta = median(time_calls(fwd(tta_input), device, warmup, repeats))
    serial_inputs = [expand_views(one, [v]) for v in views]

    def serial() -> None:
        for x in serial_inputs:
            _forward(model, x, precision)

    tta_serial = median(time_calls(serial, device, 1, max(3, repeats // 3)))
    return {
        "single_ms": single * 1000,
        "batch_size": batch_size,
        "batch_ms": batched * 1000,
        "batch_img_s": batch_size / batched,
        "tta_views": len(views),
        "tta_batched_ms": tta * 1000,
        "tta_serial_ms": tta_serial * 1000,
    }


def predictor_latencies(
    model: torch.nn.Module,
    data_config: dict,
    image_paths: Sequence[str],
    tta_mode: str,
    ensemble_members: int,
    device: torch.device,
    warmup: int,
    repeats: int,
    amp: str = "off",
    compile: bool = False,
) -> dict[str, Any]:
    """End to end from a JPEG file (decode, eval transform, forward, softmax) through
    ``SkinLesionPredictor``, and an ensemble of ``ensemble_members`` copies of the network."""
    from derm_exp.inference.ensemble import EnsemblePredictor
    from derm_exp.inference.loading import LoadedModel
    from derm_exp.inference.members import Member
    from derm_exp.inference.predictor import SkinLesionPredictor

    loaded = LoadedModel(model, list(CLASSES), dict(data_config), 1.0, {}, None)
    predictor = SkinLesionPredictor(loaded, device=device, amp=amp, compile=compile)
    path = image_paths[0]
    batch = list(image_paths)
    out: dict[str, Any] = {
        "single_ms": median(time_calls(lambda: predictor.predict(path), device, warmup, repeats))
        * 1000,
        "tta_mode": tta_mode,
        "tta_ms": median(
            time_calls(lambda: predictor.predict_with_tta(path, tta_mode), device, 1, repeats)
        )
        * 1000,
    }
    per_batch = median(
        time_calls(lambda: predictor.predict_batch(batch, batch_size=len(batch)), device, 1, 3)
    )
    out |= {"batch_images": len(batch), "batch_img_s": len(batch) / per_batch}
    if ensemble_members > 1:
        members = [
            Member(f"copy{i}", Path(f"<in-memory {i}>"), list(CLASSES), None)
            for i in range(ensemble_members)
        ]
        ensemble = EnsemblePredictor(members, [predictor] * ensemble_members)
        out["ensemble_members"] = ensemble_members
        out["ensemble_single_ms"] = (
            median(time_calls(lambda: ensemble.predict_proba([path]), device, 1, repeats)) * 1000
        )
        out["ensemble_tta_ms"] = (
            median(
                time_calls(
                    lambda: ensemble.member_probabilities([path], tta=tta_mode), device, 1, repeats
                )
            )
            * 1000
        )
    return out


def amp_agreement(
    model: torch.nn.Module,
    image_size: int,
    batch_size: int,
    precision: Precision,
    device: torch.device,
) -> dict[str, Any] | None:
    """How far autocast logits are from fp32 logits on one random batch (None without AMP)."""
    if precision.dtype is None:
        return None
    model.eval()
    x = _input(batch_size, image_size, device)
    with torch.inference_mode():
        ref = model(x).float()
        with precision.autocast(device):
            low = model(x).float()
    return {
        "dtype": str(precision.dtype).removeprefix("torch."),
        "max_abs_logit_diff": float((low - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "argmax_agreement": float((low.argmax(1) == ref.argmax(1)).float().mean()),
    }
