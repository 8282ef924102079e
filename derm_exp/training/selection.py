"""Checkpoint selection that can neither stall on a flat score nor keep a constant model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# A model whose most frequent prediction covers at least this share of the images is flagged.
DEGENERATE_SHARE = 0.95


@dataclass(frozen=True)
class Score:
    """A validation result: the monitored metric, the loss that breaks ties, and its source.

    ``degenerate`` marks a (nearly) constant model (see :func:`is_degenerate`): it never beats a
    model that is not, whatever their metric values.
    """

    value: float
    loss: float
    weights: str = "raw"
    epoch: int = -1
    degenerate: bool = False

    def as_dict(self) -> dict:
        return {
            "value": self.value,
            "loss": self.loss,
            "weights": self.weights,
            "epoch": self.epoch,
            "degenerate": self.degenerate,
        }


def is_better(new: Score, old: Score | None, mode: str = "max", tol: float = 1e-9) -> bool:
    """``new`` beats ``old``: a non-degenerate model beats a degenerate one; otherwise the
    metric decides, and a tie on it goes to the strictly lower loss (so "best" keeps moving
    while the metric is flat, e.g. at 1/7 balanced accuracy early in training)."""
    if old is None:
        return True
    if new.degenerate != old.degenerate:
        return old.degenerate
    sign = 1.0 if mode == "max" else -1.0
    diff = sign * (new.value - old.value)
    if diff > tol:
        return True
    return abs(diff) <= tol and new.loss < old.loss


def dominant_share(predictions: np.ndarray) -> float:
    """Share of the most frequent predicted class (1.0 = a constant model)."""
    if predictions.size == 0:
        return 0.0
    return float(np.bincount(predictions).max() / predictions.size)


def is_degenerate(predictions: np.ndarray) -> bool:
    """Whether at least :data:`DEGENERATE_SHARE` of the predictions are one class."""
    return predictions.size > 0 and dominant_share(predictions) >= DEGENERATE_SHARE


def warn_if_degenerate(predictions: np.ndarray, classes: list[str], where: str) -> bool:
    """Log a loud warning when (nearly) every image gets the same class; return whether it did."""
    if not is_degenerate(predictions):
        return False
    share = dominant_share(predictions)
    top = classes[int(np.bincount(predictions).argmax())]
    log.warning(
        "!!! DEGENERATE MODEL (%s): %.1f%% of images are predicted as '%s'. The model has not "
        "learned to separate classes: train longer, raise the learning rate, or use class-balanced "
        "sampling (data.sampler=weighted) / class weights (loss.class_weights=inverse_frequency).",
        where,
        100 * share,
        top,
    )
    return True
