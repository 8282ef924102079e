"""How the predictor runs its network: inference compilation and autocast settings."""

from __future__ import annotations

import torch

from derm_exp.errors import PredictionInputError
from derm_exp.runtime import Precision, resolve_precision


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` (inductor) with weight freezing, for a model that no longer trains.

    Freezing folds BatchNorm into the convolutions and fuses the activations. It is switched on
    through inductor's process-wide config: passing it as ``options={"freezing": True}`` was
    measured to compile without the effect (EfficientNetV2-S, bf16, 1 image: 36 ms vs 22 ms on
    2 cores). It only applies to graphs compiled without autograd, so training graphs compiled
    in the same process are unaffected. ``dynamic=False``: every input shape gets its own
    specialised graph, compiled on its first call (20-40 s for EfficientNetV2-S on 2 cores);
    a dynamic-shape graph, which torch would otherwise build once a second batch size appears,
    was measured 2-3x slower for single images. Worth it for a predictor that stays loaded, not
    for one image. Figures: BENCHMARKS.md.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, dynamic=False)


def predictor_precision(amp: str, device: torch.device) -> Precision:
    """Autocast settings for inference from ``amp`` (off | bf16 | fp16 | auto | fast)."""
    try:
        return resolve_precision(amp, device)
    except ValueError:
        raise PredictionInputError(f"amp={amp!r}: choose off, bf16, fp16, auto or fast") from None
