"""The subgroup figure (:mod:`derm_exp.evaluation.subgroups`): each metric with its CI per group,
in the style of :mod:`derm_exp.evaluation.plots` (an Agg-backed Figure, no pyplot)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from derm_exp.evaluation.plots import _figure
from derm_exp.evaluation.subgroups import SUBGROUP_METRICS

_LABELS = {"balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro AUC", "ece": "ECE"}


def _draw(ax: Any, groups: Mapping[str, Mapping[str, Any]], metric: str, overall: Any) -> None:
    """One panel: a point (with CI bar) per group; groups flagged few_lesions hollow and grey."""
    names = list(groups)
    for row, name in enumerate(names):
        m = groups[name]["metrics"][metric]
        if m["point"] is None:
            continue
        small = "few_lesions" in groups[name]["flags"]
        color = "tab:gray" if small else "tab:blue"
        if m["low"] is not None:
            ax.plot([m["low"], m["high"]], [row, row], color=color, linewidth=2)
        ax.plot(m["point"], row, "o", color=color, markerfacecolor="white" if small else color)
    if overall is not None:
        ax.axvline(overall, color="tab:orange", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(
        [f"{n} ({groups[n]['n_lesions']}){' *' if 'few_lesions' in groups[n]['flags'] else ''}"
         for n in names],
        fontsize=7,
    )  # fmt: skip
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def plot_subgroups(section: Mapping[str, Any]) -> Figure:
    """A row per available attribute, a column per metric; the dashed line is the value on all
    samples; the title gives the gap; ``*`` marks groups with too few lesions (no CI, not in the
    gap); the lesion count follows each group name."""
    available = {a: e for a, e in section["attributes"].items() if e["available"]}
    rows = max(1, len(available))
    heights = [max(1.6, 0.28 * len(e["groups"]) + 0.8) for e in available.values()] or [1.6]
    fig = _figure(11, sum(heights) + 0.6)
    axes = fig.subplots(rows, len(SUBGROUP_METRICS), squeeze=False, height_ratios=heights)
    if not available:
        axes[0][0].set_title("No subgroup metadata (age, sex, localization) in the data")
    for r, (attribute, entry) in enumerate(available.items()):
        for c, metric in enumerate(SUBGROUP_METRICS):
            ax = axes[r][c]
            _draw(ax, entry["groups"], metric, section["all"]["metrics"][metric]["point"])
            gap = entry["gaps"][metric]["value"]
            gap_text = "n/a" if gap is None else f"{gap:.3f}"
            ax.set_title(f"{_LABELS[metric]} by {attribute} (gap {gap_text})", fontsize=9)
    fig.suptitle(
        f"Subgroups: {section['level']:.0%} lesion-bootstrap CIs; * = fewer than "
        f"{section['min_lesions']} lesions (no CI, not in the gap)",
        fontsize=10,
    )
    return fig
