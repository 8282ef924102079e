"""The risk-coverage figure of selective prediction (:mod:`derm_exp.evaluation.selective`), in
the style of :mod:`derm_exp.evaluation.plots` (an Agg-backed Figure, no pyplot)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from derm_exp.evaluation.plots import _figure


def plot_risk_coverage(
    selective: Mapping[str, Any], threshold_point: Mapping[str, Any] | None = None
) -> Figure:
    """Risk-coverage curve of :func:`derm_exp.evaluation.selective.selective_metrics`'s output,
    with the error rate (accept all), the target coverages and, when given, the point a fitted
    abstention threshold reaches (``coverage``, ``risk``)."""
    curve = selective["curve"]
    fig = _figure(6.5, 4.8)
    ax = fig.subplots()
    ax.plot(curve["coverage"], curve["risk"], color="tab:blue", linewidth=1.5, label="Risk")
    ax.axhline(
        selective["error_rate"], color="grey", linestyle="--", linewidth=1,
        label=f"Error rate (no abstention) {selective['error_rate']:.3f}",
    )  # fmt: skip
    for point in selective["at_coverage"].values():
        if point["risk"] is not None:
            ax.plot(point["coverage"], point["risk"], "o", color="tab:orange")
            ax.annotate(
                f"{point['target']:.0%}: bal. acc. {point['balanced_accuracy']:.3f}",
                (point["coverage"], point["risk"]), textcoords="offset points",
                xytext=(-10, 8), ha="right", fontsize=8,
            )  # fmt: skip
    if threshold_point is not None and threshold_point.get("risk") is not None:
        ax.plot(
            threshold_point["coverage"], threshold_point["risk"], "s", color="tab:red",
            label=f"Abstention threshold {threshold_point['threshold']:.3f}",
        )  # fmt: skip
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max(0.05, 1.1 * max(curve["risk"])))
    ax.set_xlabel("Coverage (share of predictions accepted, most confident first)")
    ax.set_ylabel("Risk (error rate of the accepted)")
    ax.set_title(
        f"Risk-coverage: AURC = {selective['aurc']:.4f}, E-AURC = {selective['eaurc']:.4f}"
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig
