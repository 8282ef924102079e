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
