"""Calibration: expected calibration error, reliability curves and temperature scaling.

Input validation shared by the evaluation package also lives here (the lowest layer), so that
``metrics`` can import it without a cycle.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
from scipy.special import softmax

from derm_exp.errors import UserError

# Row sums of softmax outputs in float32/float16 drift by ~1e-7..1e-3; anything further off is
# not a probability vector (e.g. raw logits or TTA "max" aggregation that was not renormalised).
PROB_SUM_ATOL = 1e-3


class EvaluationInputError(UserError, ValueError):
    """Raised when labels / probabilities passed to an evaluation function are malformed."""


def validate_probs(
    y_true: Any, probs: Any, num_classes: int | None = None, where: str = "evaluation"
) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert ``(y_true, probs)`` to ``(int64 (N,), float64 (N, C))`` arrays.

    Rows are renormalised to sum exactly to 1 after the tolerance check, so that sklearn's strict
    probability checks (log_loss, brier) accept float32 softmax outputs.
    """
    y = _to_numpy(y_true)
    p = _to_numpy(probs).astype(np.float64, copy=True)
    if p.ndim != 2:
        raise EvaluationInputError(
            f"{where}: probs must be a 2-D array (n_samples, n_classes), got shape {p.shape}."
        )
    n, c = p.shape
    if num_classes is not None and c != num_classes:
        raise EvaluationInputError(
            f"{where}: probs has {c} columns but {num_classes} classes were given; "
            "pass one probability column per class, in class order."
        )
    if y.ndim != 1 or y.shape[0] != n:
        raise EvaluationInputError(
            f"{where}: y_true must be 1-D with one label per row of probs; "
            f"got y_true shape {y.shape} and probs shape {p.shape}."
        )
    if n == 0:
        raise EvaluationInputError(f"{where}: no samples (empty y_true / probs).")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise EvaluationInputError(
                f"{where}: y_true must hold integer class indices 0..{c - 1}, got dtype {y.dtype}."
            )
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or y.max() >= c:
        raise EvaluationInputError(
            f"{where}: y_true has labels outside 0..{c - 1} (min {y.min()}, max {y.max()})."
        )
    if not np.all(np.isfinite(p)):
        raise EvaluationInputError(f"{where}: probs contain NaN or inf values.")
    if p.min() < -PROB_SUM_ATOL or p.max() > 1 + PROB_SUM_ATOL:
        raise EvaluationInputError(
            f"{where}: probs must lie in [0, 1] (got min {p.min():.4g}, max {p.max():.4g}); "
            "did you pass logits? Apply softmax first."
        )
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_ATOL)
    if bad.size:
        raise EvaluationInputError(
            f"{where}: {bad.size} probability rows do not sum to 1 (first: row {bad[0]} sums to "
            f"{sums[bad[0]]:.6f}); apply softmax, or renormalise aggregated (e.g. TTA) scores."
        )
    np.clip(p, 0.0, 1.0, out=p)
    p /= p.sum(axis=1, keepdims=True)
    return y, p


def _to_numpy(x: Any) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _bin_stats(
    probs: Any, y_true: Any, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (edges, sum of correctness, sum of confidence, count) over top-1 confidence."""
    if int(n_bins) < 1:
        raise EvaluationInputError(f"n_bins must be >= 1, got {n_bins}.")
    y, p = validate_probs(y_true, probs, where="calibration")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are [e_i, e_{i+1}) except the last, [e_{n-1}, 1.0]: digitize on the interior edges maps
    # confidence exactly 1.0 to the last bin instead of dropping it (a bug seen in a peer project).
    idx = np.digitize(conf, edges[1:-1], right=False)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return edges, acc_sum, conf_sum, count


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = 15) -> float:
    """Top-1 ECE with ``n_bins`` equal-width bins on [0, 1]; the last bin includes 1.0.

    ECE = sum over non-empty bins of (n_bin / N) * |accuracy_bin - mean confidence_bin|.
    Empty bins contribute nothing.
    """
    _, acc_sum, conf_sum, count = _bin_stats(probs, y_true, n_bins)
    # The weighted |acc - conf| per bin equals |acc_sum - conf_sum| / N; empty bins give 0.
    return float(np.abs(acc_sum - conf_sum).sum() / count.sum())


def reliability_curve(probs: Any, y_true: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin accuracy and mean confidence for a reliability diagram.

    Returns ``bin_edges`` (n_bins + 1,), ``accuracy``, ``confidence`` (n_bins,; NaN for empty
    bins, which have no defined value) and ``count`` (n_bins,, int).
    """
    edges, acc_sum, conf_sum, count = _bin_stats(probs, y_true, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, acc_sum / count, np.nan)
        confidence = np.where(count > 0, conf_sum / count, np.nan)
    return {"bin_edges": edges, "accuracy": accuracy, "confidence": confidence, "count": count}


def fit_temperature(
    logits: Any,
    y_true: Any,
    max_iter: int = 100,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Fit a single temperature T > 0 minimising the NLL of ``softmax(logits / T)``.

    Fit on the VALIDATION split only; it is the caller's responsibility never to pass test-set
    logits (fitting on test leaks the test labels into the reported calibration metrics).
    Optimises log T with L-BFGS (strong Wolfe line search) from T = 1. The result is clipped to
    ``bounds``: perfectly separable data drive T towards 0 and would otherwise not converge.
    """
    import torch  # lazy: keeps `import derm_exp.evaluation.metrics` light

    z = torch.as_tensor(_to_numpy(logits), dtype=torch.float64)
    y = torch.as_tensor(_to_numpy(y_true)).long()
    if z.ndim != 2 or y.ndim != 1 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise EvaluationInputError(
            "fit_temperature: logits must be (N, C) and y_true (N,) with N > 0; "
            f"got {tuple(z.shape)} and {tuple(y.shape)}."
        )
    if not torch.isfinite(z).all():
        raise EvaluationInputError("fit_temperature: logits contain NaN or inf values.")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise EvaluationInputError(
            f"fit_temperature: y_true has labels outside 0..{z.shape[1] - 1}."
        )

    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        warnings.warn("fit_temperature did not converge; returning T = 1.0", stacklevel=2)
        return 1.0
    return float(np.clip(t, *bounds))


def apply_temperature(logits: Any, temperature: float) -> Any:
    """``softmax(logits / T)`` over the last axis; returns a tensor for a tensor, else ndarray."""
    if not temperature > 0:
        raise EvaluationInputError(f"temperature must be > 0, got {temperature}.")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(logits, torch.Tensor):
        return torch.softmax(logits / temperature, dim=-1)
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
