"""Combining class probabilities from several sources, and measuring how much they disagree.

A source is a TTA view of an image through one network (:mod:`derm_exp.inference.tta`) or a
member of an ensemble (:mod:`derm_exp.inference.ensemble`); both are combined by
:func:`aggregate`. The math runs on float64 numpy arrays: callers holding torch tensors convert
at the edge (:func:`derm_exp.inference.tta.views_to_probabilities`).

Aggregation of source probabilities ``P_i`` (N, C), i = 1..M; every result is renormalised to
sum to 1 per image:

* ``mean``: ``sum_i P_i / M``;
* ``weighted_mean``: ``sum_i w_i P_i``. For ensembles ``w = softmax((m_i - max_j m_j) / tau)``
  (:func:`metric_weights`), ``m_i`` the member's validation metric ``rank_by`` (negated for
  losses). A member ``tau`` behind the best gets ``e^-1 = 0.37`` times the best's weight;
  ``tau -> inf`` gives the mean. With the default ``tau = 0.05``, 5 points of validation
  balanced accuracy cost a factor e;
* ``geometric_mean``: ``prod_i P_i^(1/M)``;
* ``max``: ``max_i P_i`` per class.

Which apply where (:data:`VIEW_AGGREGATIONS`, :data:`MEMBER_AGGREGATIONS`): ``weighted_mean``
needs one weight per source, which members have (their validation metric) and views do not (all
views go through the same network; nothing ranks one view above another). ``max`` is a TTA
option only: the ensemble's uncertainty below is measured against a weighted mixture of its
members, which a per-class maximum is not, so ensembles (CLI, registry, pyfunc) never offered it.

Uncertainty per image, with ``p`` the aggregated output and ``k = argmax p``:

* ``confidence`` = ``p[k]``;
* ``std``: standard deviation (population, over sources) of ``P_i[k]`` (a single model's
  ``view_std`` is this over its TTA views);
* ``entropy``: predictive entropy ``H(p)`` in nats (a single model's ``uncertainty`` is
  ``H(p) / log C``: 0 = one-hot, 1 = uniform);
* ``mutual_information``: ``H(sum_i w_i P_i) - sum_i w_i H(P_i)`` (BALD), with the aggregation's
  weights (uniform for ``mean`` and ``geometric_mean``: for the latter the arithmetic mixture is
  used so the value is a true, non-negative mutual information);
* ``disagreement``: share of sources whose own argmax differs from ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from derm_exp.errors import PredictionInputError, RegistryError

VIEW_AGGREGATIONS = ("mean", "geometric_mean", "max")
MEMBER_AGGREGATIONS = ("mean", "weighted_mean", "geometric_mean")
AGGREGATIONS = ("mean", "weighted_mean", "geometric_mean", "max")
DEFAULT_TAU = 0.05
EPS = 1e-12  # probabilities are clipped here before a log


def check_aggregation(
    aggregation: str, choices: Sequence[str] = AGGREGATIONS, key: str = "aggregation"
) -> str:
    """``aggregation`` if it is one of ``choices``, else a :class:`PredictionInputError`
    (a ``ValueError``) naming ``key`` and the choices."""
    if aggregation not in choices:
        raise PredictionInputError(f"{key}={aggregation!r}: choose one of {', '.join(choices)}")
    return aggregation


def metric_weights(
    values: Sequence[float], tau: float = DEFAULT_TAU, higher_is_better: bool = True
) -> np.ndarray:
    """``softmax((m_i - max m) / tau)`` (of ``-m`` for losses): weights that sum to 1."""
    if tau <= 0:
        raise RegistryError(f"tau must be > 0, got {tau}")
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 1 or m.size == 0 or not np.isfinite(m).all():
        raise RegistryError(f"weighted_mean needs one finite metric per member, got {values}")
    z = (m if higher_is_better else -m) / tau
    w = np.exp(z - z.max())
    return w / w.sum()


def aggregate(
    probs: np.ndarray, aggregation: str = "mean", weights: Sequence[float] | None = None
) -> np.ndarray:
    """Combine source probabilities (M, N, C) into one (N, C) distribution per image."""
    check_aggregation(aggregation)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probabilities to aggregate must be (M, N, C), got shape {p.shape}")
    if aggregation == "mean":
        out = p.mean(0)
    elif aggregation == "weighted_mean":
        if weights is None:
            raise ValueError("weighted_mean needs weights")
        w = np.asarray(weights, dtype=np.float64)
        out = np.tensordot(w / w.sum(), p, axes=1)
    elif aggregation == "geometric_mean":
        out = np.exp(np.log(np.clip(p, EPS, 1.0)).mean(0))
    else:  # max
        out = p.max(0)
    return out / out.sum(-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy divided by log(C): 0 = one-hot, 1 = uniform."""
    return entropy(probs) / math.log(np.shape(probs)[-1])


def class_std(probs: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Population std over sources (axis 0) of the probability of class ``k``.

    ``probs`` is (M, N, C) with ``k`` of shape (N,), or one image's (M, C) with ``k`` an int.
    """
    p = np.asarray(probs, dtype=np.float64)
    index = np.asarray(k)[None, ..., None]
    return np.take_along_axis(p, index, -1)[..., 0].std(0)


def uncertainty(
    member_probs: np.ndarray, probs: np.ndarray, weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Per-image uncertainty of combined sources (see the module docstring), each (N,)."""
    p_m = np.asarray(member_probs, dtype=np.float64)
    n_members = p_m.shape[0]
    w = np.full(n_members, 1.0 / n_members) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    k = np.asarray(probs).argmax(-1)
    rows = np.arange(p_m.shape[1])
    mixture = np.tensordot(w, p_m, axes=1)
    return {
        "confidence": np.asarray(probs, dtype=np.float64)[rows, k],
        "std": class_std(p_m, k),
        "entropy": entropy(probs),
        "mutual_information": np.maximum(entropy(mixture) - w @ entropy(p_m), 0.0),
        "disagreement": (p_m.argmax(-1) != k).mean(0),
    }
