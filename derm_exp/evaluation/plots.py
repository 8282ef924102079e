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
from matplotlib.patches import Patch
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


_PRETTY = {"lr": "Learning rate", "nll": "NLL", "ece": "ECE", "auc": "AUC", "f1": "F1"}
# One look per series: colour, line style and marker all differ, so curves stay apart in grey
# print and where they overlap. Other split names cycle through the remaining colours.
_STYLES = {
    "train": ("tab:blue", "-", "o", "train"),
    "val": ("tab:orange", "-", "o", "val"),
    "val_raw": ("tab:green", "--", "s", "val, raw weights"),
    "val_ema": ("tab:purple", ":", "^", "val, EMA weights"),
    "test": ("tab:red", "-.", "D", "test"),
    "": ("black", "-", "o", ""),
}
_OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
# Families that repeat another by definition (the trainer's val loss is the NLL; macro recall is
# balanced accuracy; weighted recall is accuracy): drawn once, named in the kept panel's label.
_SAME_AS = {"nll": "loss", "macro_recall": "balanced_accuracy", "weighted_recall": "accuracy"}
_EMA_FLAG = "val/uses_ema"
_EMA_SHADE = {"color": "tab:purple", "alpha": 0.13, "linewidth": 0}


def _pretty(name: str) -> str:
    if name in _PRETTY:
        return _PRETTY[name]
    words = [_PRETTY.get(w, w) for w in name.replace("/", " ").split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _as_array(seq: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in seq], dtype=float)


def _complete_weight_series(history: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-epoch ``val_raw/*`` and ``val_ema/*`` series, filled from ``val/*`` where selected.

    The trainer logs ``val/*`` for the weights it selected each epoch (``val/uses_ema``) and
    only some metrics of the other weights, in a list holding just the epochs where they were
    the other ones. A series that cannot be aligned with the epochs is left out.
    """
    out = dict(history)
    flag = history.get(_EMA_FLAG)
    if flag is None:
        return out
    for split, selected in (("val_ema", flag == 1), ("val_raw", flag != 1)):
        for key in [k for k in history if k.startswith(f"{split}/")]:
            values = history[key]
            chosen = history.get(f"val/{key.partition('/')[2]}", np.full(flag.size, np.nan))
            full = np.full(flag.size, np.nan)
            if values.size == flag.size:
                full = np.where(selected & np.isnan(values), chosen[: flag.size], values)
            elif values.size == int((~selected).sum()) and chosen.size == flag.size:
                full[~selected], full[selected] = values, chosen[selected]
            else:
                del out[key]
                continue
            out[key] = full
    return out


def _families(history: Mapping[str, Sequence[float | None]]) -> dict[str, dict[str, np.ndarray]]:
    """{family: {split: values}}; family = key suffix after the first '/', split = prefix."""
    arrays = _complete_weight_series({k: _as_array(v) for k, v in history.items()})
    arrays.pop(_EMA_FLAG, None)  # shown as shading, not as a curve
    families: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        split, _, family = key.partition("/")
        if not family:
            split, family = "", key
        families.setdefault(family, {})[split] = arr
    for dup, keep in _SAME_AS.items():
        a, b = families.get(dup, {}), families.get(keep, {})
        if a and all(s in b and np.allclose(v, b[s], equal_nan=True) for s, v in a.items()):
            families.pop(dup)
            note = _pretty(dup) if _pretty(dup).isupper() else _pretty(dup).lower()
            families[keep]["= " + note] = np.array([])  # label note, no curve
    return families


def _draw_family(ax: Any, family: str, series: dict[str, np.ndarray], ema: np.ndarray) -> None:
    notes = [s[2:] for s in series if s.startswith("= ")]
    curves = {s: a for s, a in series.items() if not s.startswith("= ")}
    weights = {"val_raw", "val_ema"} & set(curves) or ema.size
    extra = iter(_OTHER_COLORS)
    for split, arr in curves.items():
        color, ls, marker, label = _STYLES.get(split) or (next(extra, "black"), "-", "x", split)
        if split == "val" and weights:
            label = "val, selected weights"
        ax.plot(
            np.arange(1, arr.size + 1),
            arr,
            color=color,
            linestyle=ls,
            marker=marker if arr.size <= 30 else None,
            markersize=4,
            linewidth=2.2 if split == "val" else 1.5,
            label=label or family,
        )
    if any(s.startswith("val") for s in curves):
        for epoch in np.flatnonzero(ema == 1) + 1:
            ax.axvspan(epoch - 0.5, epoch + 0.5, **_EMA_SHADE)
    finite = np.concatenate([a[np.isfinite(a)] for a in curves.values()])
    if family == "lr" and finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")
    ax.set_title(_pretty(family))
    ax.set_xlabel("Epoch")
    ax.set_ylabel(_pretty(family) + (f" (= {', '.join(notes)})" if notes else ""))
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(curves) > 1 or "" not in curves:
        ax.legend(fontsize=8)


def plot_training_curves(history: Mapping[str, Sequence[float | None]]) -> Figure:
    """One panel per metric family (key suffix after the first '/'), its splits together.

    Losses come first, split-less keys (``lr``) last. Each split has its own colour, line style
    and marker; ``val_raw``/``val_ema`` (raw and EMA weights) are drawn beside ``val`` (the
    weights selected that epoch), and the epochs where the EMA weights were selected
    (``val/uses_ema`` = 1) are shaded. x is the epoch, 1..n; None/NaN values leave gaps.
    """
    families = _families(history)
    ema = _as_array(history.get(_EMA_FLAG, []))
    # Losses first, split-less keys (lr, ...) last, the rest in insertion order (sort is stable).
    order = sorted(families, key=lambda f: 2 if "" in families[f] else 0 if "loss" in f else 1)
    n = max(len(order), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.6 * ncols, 3.4 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    if not order:
        axes[0].text(0.5, 0.5, "empty history", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, family in zip(axes, order, strict=False):
        _draw_family(ax, family, families[family], ema)
    for ax in axes[len(order) :]:
        ax.set_axis_off()
    title = "Training curves"
    if ema.size:
        chosen = [str(e) for e in np.flatnonzero(ema == 1) + 1]
        title += (
            f"; EMA weights selected at epoch(s) {', '.join(chosen)} (shaded), raw otherwise"
            if chosen
            else "; raw weights selected at every epoch"
        )
        fig.legend(
            handles=[Patch(**_EMA_SHADE, label="EMA weights selected")],
            loc="upper right",
            fontsize=8,
        )
    fig.suptitle(title)
    return fig
