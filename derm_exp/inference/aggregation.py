"""Aggregation and uncertainty of an ensemble's member probabilities, on fixed arrays.

Research and education only: not a medical device; never use it for diagnosis.

Aggregation of member probabilities ``P_i`` (N, C), i = 1..M:

* ``mean``: ``sum_i P_i / M``;
* ``weighted_mean``: ``sum_i w_i P_i`` with ``w = softmax((m_i - max_j m_j) / tau)``, ``m_i``
  the member's validation metric ``rank_by`` (negated for losses). A member ``tau`` behind the
  best gets ``e^-1 = 0.37`` times the best's weight; ``tau -> inf`` gives the mean. With the
  default ``tau = 0.05``, 5 points of validation balanced accuracy cost a factor e;
* ``geometric_mean``: ``prod_i P_i^(1/M)``, renormalised to sum to 1.

Uncertainty per image, with ``p`` the ensemble output and ``k = argmax p``:

* ``confidence`` = ``p[k]``;
* ``std``: standard deviation (population, over members) of ``P_i[k]``;
* ``entropy``: predictive entropy ``H(p)`` in nats;
* ``mutual_information``: ``H(sum_i w_i P_i) - sum_i w_i H(P_i)`` (BALD), with the aggregation's
  weights (uniform for ``mean`` and ``geometric_mean``: for the latter the arithmetic mixture is
  used so the value is a true, non-negative mutual information);
* ``disagreement``: share of members whose own argmax differs from ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from derm_exp.errors import PredictionInputError, RegistryError

AGGREGATIONS = ("mean", "weighted_mean", "geometric_mean")
DEFAULT_TAU = 0.05
_EPS = 1e-12


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
    member_probs: np.ndarray, aggregation: str = "mean", weights: Sequence[float] | None = None
) -> np.ndarray:
    """Combine member probabilities (M, N, C) into the ensemble's (N, C) distribution."""
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member probabilities must be (M, N, C), got shape {p.shape}")
    if aggregation == "mean":
        out = p.mean(0)
    elif aggregation == "weighted_mean":
        if weights is None:
            raise ValueError("weighted_mean needs weights")
        w = np.asarray(weights, dtype=np.float64)
        out = np.tensordot(w / w.sum(), p, axes=1)
    elif aggregation == "geometric_mean":
        out = np.exp(np.log(np.clip(p, _EPS, 1.0)).mean(0))
    else:
        raise PredictionInputError(
            f"aggregation={aggregation!r}: choose one of {', '.join(AGGREGATIONS)}"
        )
    return out / out.sum(-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def uncertainty(
    member_probs: np.ndarray, probs: np.ndarray, weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Per-image uncertainty of an ensemble (see the module docstring), each of shape (N,)."""
    p_m = np.asarray(member_probs, dtype=np.float64)
    n_members = p_m.shape[0]
    w = np.full(n_members, 1.0 / n_members) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    k = np.asarray(probs).argmax(-1)
    rows = np.arange(p_m.shape[1])
    on_k = p_m[:, rows, k]  # (M, N): each member's probability of the ensemble's class
    mixture = np.tensordot(w, p_m, axes=1)
    return {
        "confidence": np.asarray(probs, dtype=np.float64)[rows, k],
        "std": on_k.std(0),
        "entropy": entropy(probs),
        "mutual_information": np.maximum(entropy(mixture) - w @ entropy(p_m), 0.0),
        "disagreement": (p_m.argmax(-1) != k).mean(0),
    }
