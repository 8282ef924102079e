"""Inference: test-time augmentation, predictors and ensembles.

``SkinLesionPredictor`` and ``DISCLAIMER`` are imported lazily (on first attribute access) so that
importing this package does not pull in torch/timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from derm_exp.inference.predictor import DISCLAIMER, SkinLesionPredictor

__all__ = ["DISCLAIMER", "SkinLesionPredictor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from derm_exp.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
