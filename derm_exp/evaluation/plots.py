"""Evaluation figures. Each function returns a matplotlib Figure drawn on an Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so nothing is ever
shown, no global backend is switched and no pyplot state leaks; ``save_figure`` writes a PNG.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from derm_exp.evaluation.calibration import (
    expected_calibration_error,
    reliability_curve,
    validate_probs,
)
from derm_exp.evaluation.metrics import per_class_auc

DPI = 120


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG at 120 dpi (creating parent folders) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # figures made through pyplot stay registered until closed
        plt.close(fig)
    return path


def _row_normalize(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)


def plot_confusion_matrix(
    cm: Any,
    classes: Sequence[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Figure:
    """Heatmap of a C x C count matrix (rows true, columns predicted), values in every cell.

    With ``normalize`` the colours and main numbers are row fractions (recall on the diagonal)
    and the counts are shown underneath; rows of absent classes are zeros.
    """
    counts = np.asarray(cm, dtype=float)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {n} classes.")
    values = _row_normalize(counts) if normalize else counts
    support = counts.sum(axis=1).astype(int)

    size = max(5.0, 0.8 * n + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(values.max(), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.04, label="Row fraction" if normalize else "Count"
    )
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            text = f"{v:.2f}\n({int(counts[i, j])})" if normalize else f"{int(v)}"
            color = "white" if v > 0.6 * vmax else "black"
            ax.text(
                j, i, text, ha="center", va="center", color=color, fontsize=8 if normalize else 10
            )
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=[f"{c} (n={s})" for c, s in zip(classes, support, strict=True)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title} ({'row-normalised' if normalize else 'counts'}, N={int(counts.sum())})")
    return fig


def plot_roc_curves(y_true: Any, probs: Any, classes: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per class present in ``y_true``; macro AUC in the legend."""
    y, p = validate_probs(y_true, probs, len(classes), where="plot_roc_curves")
    aucs = per_class_auc(y, p)
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    cmap = colormaps["tab10"]
    for c, (name, auc) in enumerate(zip(classes, aucs, strict=True)):
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, color=cmap(c % 10), linewidth=1.8, label=f"{name} (AUC {auc:.3f})")
    valid = [a for a in aucs if a is not None]
    absent = [name for name, a in zip(classes, aucs, strict=True) if a is None]
    handles, labels = ax.get_legend_handles_labels()
    extra = (
        f"macro AUC {np.mean(valid):.3f} ({len(valid)}/{len(classes)} classes)"
        if valid
        else "macro AUC undefined (< 2 classes present)"
    )
    handles.append(Line2D([], [], color="none"))
    labels.append(extra)
    if absent:
        handles.append(Line2D([], [], color="none"))
        labels.append(f"no curve (absent): {', '.join(absent)}")
    ax.legend(handles, labels, loc="lower right", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(f"ROC curves, one-vs-rest (N={y.shape[0]})")
    return fig


def plot_reliability(probs: Any, y_true: Any, n_bins: int = 15) -> Figure:
    """Reliability diagram (accuracy per confidence bin, gap to the diagonal) + histogram."""
    curve = reliability_curve(probs, y_true, n_bins)
    ece = expected_calibration_error(probs, y_true, n_bins)
    edges, acc, conf, count = (curve[k] for k in ("bin_edges", "accuracy", "confidence", "count"))
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = count > 0

    fig = _figure(6.5, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        centers[filled],
        acc[filled],
        width=width,
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="Accuracy",
    )
    # Hatched, unfilled gap bars between accuracy and mean confidence: above the blue bar when
    # over-confident, over its top when under-confident, so the accuracy bar stays visible.
    gap = conf[filled] - acc[filled]
    top.bar(
        centers[filled],
        gap,
        bottom=acc[filled],
        width=width,
        facecolor="none",
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.5,
        label="Gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="Perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)
    top.set_title(f"Reliability diagram: ECE = {ece:.4f} ({n_bins} bins, N={int(count.sum())})")

    bottom.bar(centers, count, width=width, color="grey", edgecolor="black", linewidth=0.5)
    y, p = validate_probs(y_true, probs, where="plot_reliability")
    mean_conf, accuracy = p.max(1).mean(), (p.argmax(1) == y).mean()
    bottom.axvline(mean_conf, color="tab:red", linestyle="--", label=f"Mean conf. {mean_conf:.3f}")
    bottom.axvline(accuracy, color="tab:blue", linestyle="-", label=f"Accuracy {accuracy:.3f}")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("Confidence (top-1 probability)")
    bottom.set_ylabel("Count")
    return fig


def plot_per_class_bars(
    per_class: Mapping[str, Mapping[str, Any]], classes: Sequence[str]
) -> Figure:
    """Grouped precision / recall / F1 bars per class (``per_class`` from classification_metrics).

    Classes missing from ``per_class`` or with zero support are labelled "absent".
    """
    keys = ("precision", "recall", "f1")
    colors = ("tab:blue", "tab:orange", "tab:green")
    n = len(classes)
    values = np.array(
        [[float(per_class.get(c, {}).get(k, 0.0) or 0.0) for c in classes] for k in keys]
    )
    support = [int(per_class.get(c, {}).get("support", 0) or 0) for c in classes]
    x = np.arange(n)
    width = 0.27
    fig = _figure(max(7.0, 1.25 * n + 2.0), 4.8)
    ax = fig.add_subplot()
    for i, (k, color) in enumerate(zip(keys, colors, strict=True)):
        bars = ax.bar(x + (i - 1) * width, values[i], width, label=k.capitalize(), color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1, rotation=90)
    ax.set_xticks(
        x,
        labels=[
            f"{c}\n(n={s})" if s else f"{c}\n(absent)"
            for c, s in zip(classes, support, strict=True)
        ],
    )
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("Score")
    ax.set_xlabel("Class (support)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=3, fontsize=9, bbox_to_anchor=(0.5, 1.0))
    ax.set_title("Per-class precision, recall and F1")
    return fig


_PRETTY = {"lr": "Learning rate", "nll": "NLL", "ece": "ECE", "auc": "AUC"}


def _pretty(name: str) -> str:
    if name in _PRETTY:
        return _PRETTY[name]
    words = [_PRETTY.get(w, w) for w in name.replace("/", " ").split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def plot_training_curves(history: Mapping[str, Sequence[float | None]]) -> Figure:
    """One subplot per metric family (key suffix after the first '/'), train vs val together.

    Keys without '/' (e.g. ``lr``) get their own subplot. x is the epoch, 1..n; None/NaN values
    (epochs without that metric) leave gaps.
    """
    families: dict[str, dict[str, np.ndarray]] = {}
    for key, seq in history.items():
        split, _, family = key.partition("/")
        if not family:
            split, family = "", key
        arr = np.array([np.nan if v is None else float(v) for v in seq], dtype=float)
        families.setdefault(family, {})[split] = arr

    # Losses first, split-less keys (lr, ...) last, the rest in insertion order (sort is stable).
    order = sorted(families, key=lambda f: 2 if "" in families[f] else 0 if "loss" in f else 1)
    n = max(len(order), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.6 * ncols, 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    if not order:
        axes[0].text(0.5, 0.5, "empty history", ha="center", va="center")
        axes[0].set_axis_off()
    styles = {"train": ("tab:blue", "-"), "val": ("tab:orange", "-"), "test": ("tab:green", "--")}
    for ax, family in zip(axes, order, strict=False):
        for split, arr in families[family].items():
            epochs = np.arange(1, arr.size + 1)
            color, ls = styles.get(split, ("tab:purple", "-"))
            marker = "o" if arr.size <= 30 else None
            ax.plot(
                epochs,
                arr,
                color=color,
                linestyle=ls,
                marker=marker,
                markersize=3,
                label=split or family,
            )
        finite = np.concatenate([a[np.isfinite(a)] for a in families[family].values()])
        if family == "lr" and finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
            ax.set_yscale("log")
        ax.set_title(_pretty(family))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(_pretty(family))
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(families[family]) > 1 or "" not in families[family]:
            ax.legend(fontsize=8)
    for ax in axes[len(order) :]:
        ax.set_axis_off()
    fig.suptitle("Training curves")
    return fig
