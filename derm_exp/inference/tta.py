"""Test-time augmentation: named views applied to a normalised image batch.

The views of the ``tta`` config group are defined here once; evaluation and the predictor both
use them. Views operate on tensors (B, C, H, W) so all views of a batch run as one batch; their
probabilities are combined by :func:`derm_exp.inference.aggregation.aggregate` (choices:
:data:`~derm_exp.inference.aggregation.VIEW_AGGREGATIONS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from derm_exp.errors import PredictionInputError
from derm_exp.inference.aggregation import VIEW_AGGREGATIONS, aggregate, check_aggregation
from derm_exp.inference.view_names import SQUARE_ONLY_VIEWS, VIEW_NAMES


def _rotate(deg: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: TF.rotate(x, deg, interpolation=InterpolationMode.BILINEAR)


# The 8 symmetries of the square (dihedral group D4) are exact pixel permutations.
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-1).flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "transverse": lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),
    "rotate_p15": _rotate(15.0),
    "rotate_m15": _rotate(-15.0),
}


def check_views(views: Sequence[str]) -> list[str]:
    """Validate view names, keeping their order."""
    unknown = [v for v in views if v not in VIEW_NAMES]
    if unknown:
        raise ValueError(f"unknown TTA view(s) {unknown}; valid: {', '.join(VIEW_NAMES)}")
    return list(views)


def expand_views(x: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Stack the views of batch ``x`` (B,C,H,W) into one batch (V*B,C,H,W), view-major."""
    if x.shape[-1] != x.shape[-2] and any(v in SQUARE_ONLY_VIEWS for v in views):
        raise ValueError("90-degree TTA views need square inputs")
    return torch.cat([VIEWS[v](x) for v in check_views(views)], dim=0)


@dataclass(frozen=True)
class TTAPreset:
    """One option of the ``tta`` config group: view names and how to aggregate them."""

    mode: str
    views: tuple[str, ...]
    aggregation: str


def tta_modes() -> list[str]:
    """The options of the ``tta`` config group (``conf/tta/*.yaml``)."""
    from derm_exp.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "tta").glob("*.yaml"))


def load_tta_preset(mode: str) -> TTAPreset:
    """Read ``conf/tta/<mode>.yaml``: presets are defined once, in the config group."""
    from omegaconf import OmegaConf

    from derm_exp.config import CONF_DIR

    path = CONF_DIR / "tta" / f"{mode}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(tta_modes())}")
    return preset_from_config(OmegaConf.load(path), mode)


def preset_from_config(cfg: Any, mode: str | None = None) -> TTAPreset:
    """A :class:`TTAPreset` from a composed ``tta`` node (validated)."""
    aggregation = str(cfg.get("aggregation", "mean"))
    check_aggregation(aggregation, VIEW_AGGREGATIONS, "tta.aggregation")
    return TTAPreset(
        mode=str(mode or cfg.get("mode", "custom")),
        views=tuple(check_views(list(cfg.get("views") or ["identity"]))),
        aggregation=aggregation,
    )


def views_to_probabilities(
    logits: np.ndarray | torch.Tensor, temperature: float = 1.0, aggregation: str = "mean"
) -> np.ndarray:
    """Softmax of (N, C) or per-view (V, N, C) logits at ``temperature``, views aggregated.

    The temperature divides each view's logits before the softmax, as when it was fitted. The
    softmax runs in float32 torch; views are combined in float64 and returned as float32.
    """
    t = torch.as_tensor(logits, dtype=torch.float32) / float(temperature)
    probs = torch.softmax(t, -1).numpy()
    if probs.ndim == 3:
        check_aggregation(aggregation, VIEW_AGGREGATIONS)
        probs = aggregate(probs, aggregation).astype(np.float32)
    return probs


def resolve_preset(tta: str | TTAPreset | None, aggregation: str | None = None) -> TTAPreset:
    """The preset for a TTA mode name (``conf/tta/<mode>.yaml``) or a preset (None: the single
    identity view), with ``aggregation`` (mean | geometric_mean | max) overriding its own; a user
    error (unknown mode or aggregation) is a :class:`~derm_exp.errors.PredictionInputError`."""
    if tta is None:
        return TTAPreset("none", ("identity",), "mean")
    if isinstance(tta, TTAPreset):
        preset = tta
    else:
        try:
            preset = load_tta_preset(str(tta))
        except ValueError:
            raise PredictionInputError(
                f"unknown TTA mode {tta!r}; choose one of {', '.join(tta_modes())}"
            ) from None
    if aggregation is not None:
        check_aggregation(aggregation, VIEW_AGGREGATIONS)
        preset = TTAPreset(preset.mode, preset.views, aggregation)
    return preset
