"""classification_metrics / scalar_metrics against scikit-learn on fixed arrays."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from derm_exp.evaluation.calibration import EvaluationInputError
from derm_exp.evaluation.metrics import SCALAR_KEYS, classification_metrics, scalar_metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
C = len(CLASSES)


def _data(n=300, seed=0, absent=()):
    rng = np.random.default_rng(seed)
    keep = [c for c in range(C) if c not in absent]
    y = rng.choice(keep, size=n)
    logits = rng.normal(size=(n, C))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs.astype(np.float32)


def _walk_no_nan(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            _walk_no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            _walk_no_nan(v)
    elif isinstance(obj, float):
        assert math.isfinite(obj)


def test_matches_sklearn_all_classes_present():
    y, p = _data()
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(1)
    labels = list(range(C))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="weighted"))
    assert m["macro_precision"] == pytest.approx(
        precision_score(y, pred, labels=labels, average="macro", zero_division=0)
    )
    assert m["macro_recall"] == pytest.approx(recall_score(y, pred, labels=labels, average="macro"))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    p64 = p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True)
    assert m["nll"] == pytest.approx(log_loss(y, p64, labels=labels), rel=1e-6)
    onehot = np.eye(C)[y]
    assert m["brier"] == pytest.approx(np.mean(((onehot - p) ** 2).sum(1)), rel=1e-5)
    assert m["absent_classes"] == []
    assert 0.0 <= m["ece"] <= 1.0
    for i, cls in enumerate(CLASSES):
        assert m["per_class"][cls]["auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        assert m["per_class"][cls]["support"] == int((y == i).sum())


def test_absent_class_reported_and_no_nan():
    y, p = _data(absent=(3,))
    m = classification_metrics(y, p, CLASSES)
    assert m["absent_classes"] == ["df"]
    assert m["per_class"]["df"]["auc"] is None
    assert m["per_class"]["df"]["support"] == 0
    present = [i for i in range(C) if i != 3]
    expected = np.mean([roc_auc_score(y == i, p[:, i]) for i in present])
    assert m["macro_auc"] == pytest.approx(expected)
    # balanced accuracy (ISIC 2018) averages recall over the present classes only
    pred = p.argmax(1)
    recalls = [((pred == i) & (y == i)).sum() / (y == i).sum() for i in present]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    # macro recall uses all 7 labels (absent counts as 0), so train/val/test share one label set
    assert m["macro_recall"] == pytest.approx(np.sum(recalls) / C)
    cm = np.array(m["confusion_matrix"])
    cmn = np.array(m["confusion_matrix_normalized"])
    assert cm.shape == cmn.shape == (C, C)
    assert cm[3].sum() == 0 and np.all(cmn[3] == 0)
    np.testing.assert_allclose(cmn[present].sum(1), 1.0)
    _walk_no_nan(m)
    json.dumps(m)  # JSON-serialisable (no numpy scalars)
    flat = scalar_metrics(m)
    assert set(flat) == set(SCALAR_KEYS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())


def test_single_class_present_macro_auc_none():
    y = np.full(20, 5)
    p = np.full((20, C), 1.0 / C)
    m = classification_metrics(y, p, CLASSES)
    assert m["macro_auc"] is None
    assert len(m["absent_classes"]) == C - 1
    assert np.array(m["confusion_matrix"]).shape == (C, C)
    assert "macro_auc" not in scalar_metrics(m)
    assert scalar_metrics(m, prefix="val/")["val/accuracy"] == m["accuracy"]
    _walk_no_nan(m)


def test_confusion_matrix_always_7x7_even_with_few_predictions():
    y = np.array([0, 1, 1, 0])
    p = np.zeros((4, C))
    p[:, 0] = 1.0
    m = classification_metrics(y, p, CLASSES)
    assert np.array(m["confusion_matrix"]).shape == (C, C)
    assert m["confusion_matrix"][1][0] == 2


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        (np.zeros(3, int), np.full((3, 6), 1 / 6), "6 columns"),
        (np.zeros(4, int), np.full((3, C), 1 / C), "one label per row"),
        (np.zeros(3, int), np.ones((3, C)), "do not sum to 1"),
        (np.zeros(3, int), np.full((3, C), np.nan), "NaN"),
        (np.array([0, 1, 9]), np.full((3, C), 1 / C), "outside"),
        (np.zeros(3), np.full((3,), 1.0), "2-D"),
        (np.zeros(0, int), np.zeros((0, C)), "no samples"),
    ],
)
def test_input_validation(y, p, match):
    with pytest.raises(EvaluationInputError, match=match):
        classification_metrics(y, p, CLASSES)
    assert issubclass(EvaluationInputError, ValueError)
