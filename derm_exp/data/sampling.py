"""Class-imbalance helpers: class counts, loss class weights and a weighted sampler; the
samplers that split an epoch over DDP ranks (:class:`RankSliceSampler`, :class:`ShardSampler`).

Compute these from the *training* split only, so validation/test labels never leak into training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's training order: ``(seed, epoch)``, independent of earlier epochs."""
    return int(seed) * 100_003 + int(epoch)


class RankSliceSampler(Sampler[int]):
    """One rank's slice of the epoch's global draw, for DDP training.

    The draw is what one process's sampler takes from ``generator`` (the trainer reseeds it per
    epoch with :func:`epoch_seed`): ``torch.multinomial(weights, n, replacement=True)`` like
    :class:`~torch.utils.data.WeightedRandomSampler` when ``weights`` are given
    (``data.sampler=weighted``), else ``torch.randperm(n)`` like a shuffled DataLoader. Rank
    ``r`` of ``W`` takes ``draw[r::W]`` (the tail past a multiple of ``W`` is dropped, so every
    rank runs the same number of steps): at each step the ``W`` per-rank batches are one
    consecutive global batch of the single-process order. Written here because torch has no
    distributed weighted sampler, and ``DistributedSampler``'s order differs from one process's.
    """

    def __init__(
        self,
        n: int,
        rank: int,
        world_size: int,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)
        self.generator, self.weights = generator, weights

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Seed the draw of ``epoch`` (what the trainer does through the shared generator)."""
        self.generator.manual_seed(epoch_seed(seed, epoch))

    def global_draw(self) -> torch.Tensor:
        """The epoch's draw over all ranks (consumes ``generator`` like :meth:`__iter__`)."""
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, True, generator=self.generator)
        return torch.randperm(self.n, generator=self.generator)

    def __iter__(self) -> Iterator[int]:
        draw = self.global_draw()
        yield from draw[self.rank : len(self) * self.world_size : self.world_size].tolist()

    def __len__(self) -> int:
        return self.n // self.world_size


class ShardSampler(Sampler[int]):
    """A contiguous, unpadded shard of ``range(n)`` for rank ``rank`` of ``world_size``:
    concatenating the ranks' outputs in rank order gives every index once, in order (exact
    sharded evaluation; torch's ``DistributedSampler`` pads with duplicates)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.start = n * rank // world_size
        self.stop = n * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
