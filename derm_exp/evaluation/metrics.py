"""Classification metrics on a fixed label set (all classes), computed with scikit-learn.

Every metric uses ``labels=range(C)`` so train / val / test numbers share one label set.
Two conventions matter when a class is absent from ``y_true``:

* ``balanced_accuracy`` is sklearn's, i.e. mean recall over the classes present in ``y_true``
  (the ISIC 2018 challenge metric); ``macro_recall`` averages over all C classes (absent = 0).
* ``macro_auc`` is the mean one-vs-rest AUC over present classes; absent classes are listed in
  ``absent_classes`` with ``auc = None``. It is ``None`` when fewer than 2 classes are present.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from derm_exp.evaluation.calibration import (
    EvaluationInputError,
    expected_calibration_error,
    validate_probs,
)

SCALAR_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "weighted_precision",
    "weighted_recall",
    "macro_auc",
    "ece",
    "brier",
    "nll",
)

__all__ = [
    "SCALAR_KEYS",
    "EvaluationInputError",
    "balanced_accuracy",
    "classification_metrics",
    "per_class_auc",
    "scalar_metrics",
]


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over classes present in ``y_true`` (ISIC 2018), without sklearn's warning.

    sklearn warns when predictions contain classes absent from ``y_true``; that is expected on
    small splits and the metric already ignores them.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC per class; ``None`` where the class has no positives or no negatives."""
    aucs: list[float | None] = []
    for c in range(probs.shape[1]):
        pos = y_true == c
        # sklearn's multi-class roc_auc_score raises as soon as one class is absent, so score
        # each class on its own binary problem and report the undefined ones explicitly.
        if pos.all() or not pos.any():
            aucs.append(None)
        else:
            aucs.append(float(roc_auc_score(pos, probs[:, c])))
    return aucs


def classification_metrics(
    y_true: Any, probs: Any, classes: Sequence[str], *, n_bins: int = 15
) -> dict[str, Any]:
    """All evaluation metrics for predicted class probabilities ``probs`` (N, C).

    Returns JSON-serialisable values: the scalar keys in ``SCALAR_KEYS`` (``macro_auc`` may be
    None), ``per_class`` {cls: {precision, recall, f1, support, auc}}, ``confusion_matrix``
    (C x C counts, rows = true, columns = predicted), ``confusion_matrix_normalized`` (rows sum
    to 1; rows with zero support are zeros), ``absent_classes``, ``present_classes``,
    ``n_samples`` and ``classes``. ``brier`` is the multi-class Brier score (mean over samples of
    the summed squared error against the one-hot label); ``nll`` is the mean log loss.
    """
    classes = list(classes)
    num_classes = len(classes)
    if num_classes < 2:
        raise EvaluationInputError(f"need at least 2 classes, got {classes}.")
    y, p = validate_probs(y_true, probs, num_classes, where="classification_metrics")
    labels = list(range(num_classes))
    pred = p.argmax(axis=1)
    support = np.bincount(y, minlength=num_classes)

    prec, rec, f1, _ = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    averaged = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        averaged.update(
            {f"{avg}_precision": float(ap), f"{avg}_recall": float(ar), f"{avg}_f1": float(af)}
        )

    aucs = per_class_auc(y, p)
    present = [i for i in labels if support[i] > 0]
    valid_aucs = [a for a in aucs if a is not None]
    # With >= 2 classes present, every present class has positives and negatives, so the mean
    # over defined AUCs is exactly the mean over present classes.
    macro_auc = float(np.mean(valid_aucs)) if len(present) >= 2 else None

    return {
        "n_samples": int(y.shape[0]),
        "classes": classes,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        **averaged,
        "macro_auc": macro_auc,
        "ece": expected_calibration_error(p, y, n_bins=n_bins),
        "brier": float(brier_score_loss(y, p, labels=labels)),
        # sklearn clips probabilities to [eps, 1 - eps] of the dtype, so a 0 never gives inf.
        "nll": float(log_loss(y, p, labels=labels)),
        "per_class": {
            cls: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "auc": aucs[i],
            }
            for i, cls in enumerate(classes)
        },
        "present_classes": [classes[i] for i in present],
        "absent_classes": [classes[i] for i in labels if support[i] == 0],
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        # sklearn's normalize="true" turns 0/0 rows (absent classes) into zeros.
        "confusion_matrix_normalized": confusion_matrix(
            y, pred, labels=labels, normalize="true"
        ).tolist(),
    }


def scalar_metrics(m: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flat ``{prefix + name: float}`` of the scalar metrics in ``m``, for MLflow logging.

    Entries that are None (e.g. an undefined ``macro_auc``) or missing are left out.
    """
    return {
        f"{prefix}{k}": float(m[k])
        for k in SCALAR_KEYS
        if m.get(k) is not None and np.isfinite(float(m[k]))
    }
