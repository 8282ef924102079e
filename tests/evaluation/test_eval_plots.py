"""Every plot writes a non-empty PNG and copes with a class absent from y_true."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from derm_exp.evaluation import plots
from derm_exp.evaluation.metrics import classification_metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 2, 4, 5, 6], size=200)  # "df" absent
    logits = rng.normal(size=(200, 7))
    logits[np.arange(200), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, classification_metrics(y, probs, CLASSES)


def _save(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = plots.save_figure(fig, tmp_path / "sub" / f"{name}.png")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix(data, tmp_path, normalize):
    _, _, m = data
    fig = plots.plot_confusion_matrix(m["confusion_matrix"], CLASSES, normalize=normalize)
    _save(fig, tmp_path, f"cm_{normalize}")


def test_roc_curves(data, tmp_path):
    y, p, _ = data
    fig = plots.plot_roc_curves(y, p, CLASSES)
    labels = fig.axes[0].get_legend().get_texts()
    text = " ".join(t.get_text() for t in labels)
    assert "macro AUC" in text and "df" in text
    _save(fig, tmp_path, "roc")


def test_roc_single_class(tmp_path):
    y = np.zeros(10, int)
    fig = plots.plot_roc_curves(y, np.full((10, 7), 1 / 7), CLASSES)
    _save(fig, tmp_path, "roc_single")


def test_reliability(data, tmp_path):
    y, p, _ = data
    fig = plots.plot_reliability(p, y, n_bins=15)
    assert "ECE" in fig.axes[0].get_title()
    _save(fig, tmp_path, "reliability")


def test_per_class_bars(data, tmp_path):
    _, _, m = data
    fig = plots.plot_per_class_bars(m["per_class"], CLASSES)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "df\n(absent)" in ticks
    _save(fig, tmp_path, "per_class")


def test_training_curves(tmp_path):
    history = {
        "train/loss": [1.9, 1.4, 1.1, 0.9],
        "val/loss": [1.8, 1.5, 1.3, None],
        "train/accuracy": [0.3, 0.5, 0.6, 0.7],
        "val/balanced_accuracy": [0.2, 0.3, 0.4, 0.45],
        "val/macro_auc": [0.6, 0.7, 0.75, 0.8],
        "lr": [1e-5, 1e-3, 5e-4, 1e-4],
    }
    fig = plots.plot_training_curves(history)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles[0] == "Loss" and titles[-1] == "Learning rate"
    assert len(titles) == 5  # loss, accuracy, balanced accuracy, macro AUC, lr
    loss_ax = fig.axes[0]
    assert {line.get_label() for line in loss_ax.get_lines()} == {"train", "val"}
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_xdata(), [1, 2, 3, 4])
    _save(fig, tmp_path, "curves")


def test_training_curves_empty(tmp_path):
    _save(plots.plot_training_curves({}), tmp_path, "empty")


# The trainer's history for raw + EMA weights (shape of the demo run's): ``val/*`` is the
# selected weights' score, ``val_{raw,ema}/balanced_accuracy`` are logged every epoch, and the
# other weights' loss only on the epochs where they were not selected (EMA at epoch 3).
EMA_HISTORY = {
    "train/loss": [1.63, 0.79, 0.51, 0.42, 0.29],
    "lr": [2.8e-3, 2.3e-3, 1.5e-3, 8e-4, 2e-4],
    "val/balanced_accuracy": [0.14, 0.43, 0.52, 0.58, 0.67],
    "val/macro_recall": [0.14, 0.43, 0.52, 0.58, 0.67],
    "val/nll": [1.33, 0.85, 0.47, 0.55, 0.35],
    "val/loss": [1.33, 0.85, 0.47, 0.55, 0.35],
    "val_ema/balanced_accuracy": [0.14, 0.24, 0.52, 0.52, 0.60],
    "val_ema/loss": [1.50, 0.81, 0.52, 0.39],
    "val_raw/balanced_accuracy": [0.14, 0.43, 0.47, 0.58, 0.67],
    "val/uses_ema": [0.0, 0.0, 1.0, 0.0, 0.0],
    "val_raw/loss": [1.96],
}


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.axison and ax.get_title() == title)


def test_training_curves_tell_raw_and_ema_apart(tmp_path):
    fig = plots.plot_training_curves(EMA_HISTORY)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    # The 0/1 selection flag is no curve; panels that repeat another one are drawn once.
    assert titles == ["Loss", "Balanced accuracy", "Learning rate"]
    assert "EMA weights selected at epoch(s) 3 (shaded)" in fig.get_suptitle()

    scores = _panel(fig, "Balanced accuracy")
    lines = {line.get_label(): line for line in scores.get_lines()}
    assert set(lines) == {"val, selected weights", "val, raw weights", "val, EMA weights"}
    looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines.values()}
    assert len({c for c, _, _ in looks}) == 3 and len({s for _, s, _ in looks}) == 3
    assert scores.get_ylabel() == "Balanced accuracy (= macro recall)"
    shaded = [p.get_x() for p in scores.patches]  # the EMA epoch, as a band around it
    assert shaded == [pytest.approx(2.5)]

    loss = _panel(fig, "Loss")
    assert loss.get_ylabel() == "Loss (= NLL)"
    curves = {line.get_label(): line.get_ydata() for line in loss.get_lines()}
    # Full per-epoch series: the selected weights' loss fills the epochs the list lacks.
    np.testing.assert_allclose(curves["val, raw weights"], [1.33, 0.85, 1.96, 0.55, 0.35])
    np.testing.assert_allclose(curves["val, EMA weights"], [1.50, 0.81, 0.47, 0.52, 0.39])
    assert not _panel(fig, "Learning rate").patches  # no val curve there, no shading
    _save(fig, tmp_path, "curves_ema")


def test_training_curves_keep_distinct_families_and_misaligned_series_out():
    history = {
        **{k: v for k, v in EMA_HISTORY.items() if k != "val_raw/loss"},
        "val/nll": [1.3, 0.8, 0.5, 0.5, 0.4],  # differs from val/loss: its own panel
        "val_ema/loss": [1.5, 0.8],  # matches no epoch layout: left out, not drawn shifted
        "val/uses_ema": [0.0] * 5,
    }
    fig = plots.plot_training_curves(history)
    assert "NLL" in [ax.get_title() for ax in fig.axes if ax.axison]
    assert "raw weights selected at every epoch" in fig.get_suptitle()
    labels = {line.get_label() for line in _panel(fig, "Loss").get_lines()}
    assert labels == {"train", "val, selected weights"}
    assert not _panel(fig, "Loss").patches
