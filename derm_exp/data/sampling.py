"""Class-imbalance helpers: class counts, loss class weights and a weighted sampler.

Compute these from the *training* split only, so validation/test labels never leak into training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples per class, shape ``(num_classes,)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return np.bincount(labels, minlength=num_classes)


def class_weights(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    power: float = 1.0,
    clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-class loss weights from inverse class frequency.

    With ``n_c`` samples in class ``c`` and ``P`` the set of classes with ``n_c > 0``::

        raw_c = (1 / n_c) ** power                      for c in P
        w_c   = raw_c / mean(raw_k for k in P)          (mean 1 over present classes)
        w_c   = clip(w_c, 1 / clamp, clamp)             (skipped when clamp is None/0)
        w_c   = 0                                       for classes absent from ``labels``

    ``power=1`` is full inverse frequency, ``0.5`` its square root, ``0`` all ones. The mean is
    exactly 1 only when nothing was clipped. Returns a float32 tensor of shape ``(num_classes,)``.
    """
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("cannot compute class weights from an empty label set")
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = (1.0 / counts[present]) ** power
    weights[present] /= weights[present].mean()
    if clamp:
        weights[present] = np.clip(weights[present], 1.0 / clamp, clamp)
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(
    labels: Sequence[int] | np.ndarray, num_classes: int, power: float = 0.5
) -> np.ndarray:
    """Per-sample weight ``(1 / n_{y_i}) ** power``.

    A class is then drawn with probability proportional to ``n_c ** (1 - power)``: ``power=1``
    samples classes uniformly, ``0`` keeps the natural frequencies.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = class_counts(labels, num_classes).astype(np.float64)
    return (1.0 / counts[labels]) ** power


def make_weighted_sampler(
    labels: Sequence[int] | np.ndarray, num_classes: int, power: float = 0.5, seed: int = 0
) -> WeightedRandomSampler:
    """Sampler drawing ``len(labels)`` indices per epoch with replacement by :func:`sample_weights`.

    Seeded by ``seed``: the sequence of epochs is reproducible.
    """
    if len(labels) == 0:
        raise ValueError("cannot build a sampler for an empty label set")
    weights = torch.as_tensor(sample_weights(labels, num_classes, power), dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        weights, num_samples=len(labels), replacement=True, generator=generator
    )
