"""Lesion-level bootstrap confidence intervals."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from derm_exp.evaluation.bootstrap import (
    bootstrap_ci,
    group_multiplicities,
    ovr_auc_by_ranks,
    standard_metric_fns,
)
from derm_exp.evaluation.metrics import classification_metrics

C = 7


def _data(n_lesions=120, seed=0):
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, size=n_lesions)  # 1-3 images per lesion
    groups = np.repeat([f"HAM_{i:07d}" for i in range(n_lesions)], per)
    y = np.repeat(rng.integers(0, C, size=n_lesions), per)
    logits = rng.normal(size=(len(y), C))
    logits[np.arange(len(y)), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, groups


def test_ci_contains_point_and_is_deterministic():
    y, p, g = _data()
    fns = standard_metric_fns(C)
    a = bootstrap_ci(y, p, g, fns, n_boot=200, seed=1)
    b = bootstrap_ci(y, p, g, fns, n_boot=200, seed=1)
    c = bootstrap_ci(y, p, g, fns, n_boot=200, seed=2)
    assert a == b
    assert a != c
    for name, r in a.items():
        assert r["low"] <= r["point"] <= r["high"], name
        assert r["low"] < r["high"]
        assert r["n_valid"] == 200


def test_groups_are_resampled_whole():
    g = np.array(["a", "a", "a", "b", "c", "c"])
    mult = group_multiplicities(g, n_boot=50, seed=0)
    assert mult.shape == (50, 6)
    # every image of a lesion appears the same number of times
    assert (mult[:, 0] == mult[:, 1]).all() and (mult[:, 1] == mult[:, 2]).all()
    assert (mult[:, 4] == mult[:, 5]).all()
    # 3 lesions drawn per resample
    assert (mult[:, [0, 3, 4]].sum(1) == 3).all()


def test_undefined_resamples_are_skipped():
    # 2 lesions, one per class: resamples drawing the same lesion twice have one class only.
    y = np.array([0, 0, 1])
    p = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    g = np.array([1, 1, 2])
    out = bootstrap_ci(y, p, g, standard_metric_fns(2), n_boot=100, seed=0)
    assert 0 < out["macro_auc"]["n_valid"] < 100
    assert out["accuracy"]["n_valid"] == 100
    assert out["macro_auc"]["point"] == pytest.approx(1.0)


def test_all_resamples_undefined_gives_none():
    y = np.zeros(4, int)
    p = np.full((4, 2), 0.5)
    out = bootstrap_ci(y, p, None, {"never": lambda y, p: None}, n_boot=10)
    assert out["never"] == {"point": None, "low": None, "high": None, "n_valid": 0}


def test_bad_groups_length():
    y, p, g = _data(10)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, g[:-1], standard_metric_fns(C), n_boot=5)


def test_rank_auc_matches_sklearn_including_ties_and_absent_class():
    y, p, _ = _data()
    p = np.round(p, 2)  # many ties
    y[y == 3] = 4  # class 3 absent
    auc = ovr_auc_by_ranks(y, p)
    assert np.isnan(auc[3])
    for c in range(C):
        if c != 3:
            assert auc[c] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)


def test_standard_fns_agree_with_classification_metrics():
    y, p, _ = _data()
    names = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
    m = classification_metrics(y, p, [str(i) for i in range(C)])
    fns = standard_metric_fns(C)
    for name in names:
        assert fns[name](y, p) == pytest.approx(m[name], abs=1e-12), name
