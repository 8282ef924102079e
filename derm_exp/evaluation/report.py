"""An evaluation report from predicted probabilities: metrics with bootstrap CIs, then logging.

:func:`evaluate_predictions` computes everything (no I/O); :func:`log_evaluation` writes the JSON
and the figures (to a folder and/or the active MLflow run) and logs the scalar metrics. Used by
``python -m derm_exp.evaluate`` and by the end-of-training report.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derm_exp.evaluation.bootstrap import bootstrap_ci, standard_metric_fns
from derm_exp.evaluation.metrics import classification_metrics, scalar_metrics
from derm_exp.evaluation.selective import DEFAULT_COVERAGES, selective_metrics

log = logging.getLogger(__name__)

CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
CALIBRATED_KEYS = ("ece", "nll", "brier")


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    calibrated_probs: Any = None,
    n_bins: int = 15,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
) -> dict[str, Any]:
    """All metrics of ``probs`` (N, C) against ``y_true`` (N,), JSON-serialisable.

    The keys of :func:`classification_metrics`, plus ``bootstrap``: percentile CIs (level
    ``1 - alpha``) of accuracy, balanced accuracy, macro-F1 and macro AUC from ``n_boot``
    resamples of ``groups`` (lesion ids; None resamples images). ``n_boot=0`` skips them.
    With ``calibrated_probs`` (the same predictions after temperature scaling), ``calibrated``
    holds their scalar metrics (ECE, NLL, Brier, ...). ``selective``: the risk-coverage curve,
    AURC, E-AURC and the scores at ``coverages`` (:mod:`derm_exp.evaluation.selective`) of the
    calibrated probabilities when given (the confidence is the max calibrated probability).
    """
    result = classification_metrics(y_true, probs, classes, n_bins=n_bins)
    if n_boot > 0:
        fns = {k: v for k, v in standard_metric_fns(len(classes)).items() if k in CI_METRICS}
        result["bootstrap"] = {
            "n_boot": int(n_boot),
            "seed": int(seed),
            "level": 1.0 - alpha,
            "resampled": "images" if groups is None else "lesions",
            "n_groups": int(result["n_samples"] if groups is None else len(set(groups))),
            "intervals": bootstrap_ci(y_true, probs, groups, fns, n_boot, seed, alpha),
        }
    if calibrated_probs is not None:
        result["calibrated"] = scalar_metrics(
            classification_metrics(y_true, calibrated_probs, classes, n_bins=n_bins)
        )
    chosen = probs if calibrated_probs is None else calibrated_probs
    result["selective"] = {
        "probabilities": "uncalibrated" if calibrated_probs is None else "calibrated",
        **selective_metrics(y_true, chosen, coverages),
    }
    return result


def flat_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{prefix + name: float}`` for MLflow: scalars, per-class, CI bounds, calibrated scores."""
    flat = scalar_metrics(result, prefix)
    flat[f"{prefix}n_samples"] = float(result["n_samples"])
    for cls, m in result["per_class"].items():
        for key in ("precision", "recall", "f1", "auc"):
            if m.get(key) is not None:
                flat[f"{prefix}{cls}/{key}"] = float(m[key])
    for name, ci in result.get("bootstrap", {}).get("intervals", {}).items():
        for bound in ("low", "high"):
            if ci.get(bound) is not None:
                flat[f"{prefix}{name}_ci_{bound}"] = float(ci[bound])
    for key in CALIBRATED_KEYS:
        value = result.get("calibrated", {}).get(key)
        if value is not None:
            flat[f"{prefix}{key}_calibrated"] = float(value)
    flat.update(selective_flat(result.get("selective"), prefix))
    if result.get("subgroups"):
        from derm_exp.evaluation.subgroups import gap_metrics

        flat.update(gap_metrics(result["subgroups"], prefix))
    return flat


def selective_flat(selective: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """``aurc``, ``eaurc`` and per target coverage ``selective_balanced_accuracy_cov90``,
    ``selective_risk_cov90`` (MLflow refuses '@' in names)."""
    if not selective:
        return {}
    flat = {f"{prefix}aurc": float(selective["aurc"]), f"{prefix}eaurc": float(selective["eaurc"])}
    for key, point in selective["at_coverage"].items():
        for name in ("balanced_accuracy", "risk"):
            if point.get(name) is not None:
                flat[f"{prefix}selective_{name}_{key}"] = float(point[name])
    return flat


def evaluation_figures(
    result: Mapping[str, Any],
    probs: Any,
    y_true: Any,
    classes: Sequence[str],
    calibrated_probs: Any = None,
    title: str = "Evaluation",
) -> dict[str, Any]:
    """The report's figures by file stem: confusion matrix (row-normalised), ROC curves,
    reliability diagram + confidence histogram (of the calibrated probabilities when given,
    the uncalibrated one then as ``calibration_uncalibrated``) and per-class bars."""
    from derm_exp.evaluation import plots

    figures = {
        "confusion_matrix": plots.plot_confusion_matrix(
            np.asarray(result["confusion_matrix"]),
            classes,
            normalize=True,
            title=f"{title} confusion matrix",
        ),
        "roc_curves": plots.plot_roc_curves(y_true, probs, classes),
        "calibration": plots.plot_reliability(
            probs if calibrated_probs is None else calibrated_probs, y_true
        ),
        "per_class": plots.plot_per_class_bars(result["per_class"], classes),
    }
    if calibrated_probs is not None:
        figures["calibration_uncalibrated"] = plots.plot_reliability(probs, y_true)
    if "selective" in result:
        from derm_exp.evaluation.selective_plots import plot_risk_coverage

        figures["risk_coverage"] = plot_risk_coverage(
            result["selective"], (result.get("abstention") or {}).get("on_data")
        )
    if result.get("subgroups"):
        from derm_exp.evaluation.subgroup_plots import plot_subgroups

        figures["subgroups"] = plot_subgroups(result["subgroups"])
    return figures


def log_evaluation(
    result: Mapping[str, Any],
    probs: Any,
    y_true: Any,
    classes: Sequence[str],
    prefix: str,
    *,
    calibrated_probs: Any = None,
    output_dir: str | Path | None = None,
    artifact_dir: str = "",
    json_name: str = "evaluation_metrics.json",
    json_payload: Mapping[str, Any] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    extra_figures: Mapping[str, Any] | None = None,
    title: str = "Evaluation",
) -> dict[str, float]:
    """Log metrics (``prefix``-named), the JSON report and the figures; return the metrics.

    Files go to ``output_dir`` (``json_name`` and ``plots/*.png``) when given, and to the active
    MLflow run under ``artifact_dir`` when there is one. ``json_payload`` replaces ``result``
    as the JSON content.
    """
    import mlflow

    from derm_exp.evaluation.plots import save_figure

    flat = {**flat_metrics(result, prefix), **(extra_metrics or {})}
    payload = dict(json_payload if json_payload is not None else result)
    active = mlflow.active_run() is not None
    where = f"{artifact_dir.strip('/')}/" if artifact_dir.strip("/") else ""
    if active:
        mlflow.log_metrics(flat)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / json_name).write_text(json.dumps(payload, indent=2, default=_json_default))
        if active:
            mlflow.log_artifact(str(out / json_name), where.rstrip("/") or None)
    elif active:
        mlflow.log_text(json.dumps(payload, indent=2, default=_json_default), where + json_name)
    if result.get("subgroups"):
        csv_name = str(Path(json_name).with_name("subgroups.csv"))
        _log_subgroup_table(result["subgroups"], output_dir, where + csv_name, active)
    figures = evaluation_figures(result, probs, y_true, classes, calibrated_probs, title)
    figures.update(extra_figures or {})
    for name, fig in figures.items():
        if output_dir is not None:
            path = save_figure(fig, Path(output_dir) / "plots" / f"{name}.png")
            if active:
                mlflow.log_artifact(str(path), f"{where}plots")
        elif active:
            mlflow.log_figure(fig, f"{where}plots/{name}.png")
    return flat


def _log_subgroup_table(
    section: Mapping[str, Any], output_dir: str | Path | None, name: str, active: bool
) -> None:
    """The subgroup table (:func:`derm_exp.evaluation.subgroups.subgroup_table`) as the CSV
    ``name`` (beside the JSON report), in ``output_dir`` and/or the active MLflow run."""
    import mlflow

    from derm_exp.evaluation.subgroups import subgroup_table

    text = subgroup_table(section).to_csv(index=False)
    if output_dir is not None:
        path = Path(output_dir) / Path(name).name
        path.write_text(text)
        if active:
            mlflow.log_artifact(str(path), str(Path(name).parent).strip(".") or None)
    elif active:
        mlflow.log_text(text, name)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def lesion_level(
    y_true: Any, lesion_ids: Sequence[Any], *probs: Any
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Average the probabilities of each lesion's images: one sample per lesion.

    Returns ``(labels, lesion ids, [averaged probs, ...])`` in order of first appearance. A
    lesion whose images disagree on the label takes its most frequent label (with a warning).
    """
    ids = pd.Series(np.asarray(lesion_ids, dtype=object), name="lesion")
    y = pd.Series(np.asarray(y_true), name="y")
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} lesion ids for {len(y)} samples")
    codes, uniques = pd.factorize(ids)
    labels = y.groupby(codes).agg(lambda s: s.value_counts().sort_index().idxmax())
    mixed = int((y.groupby(codes).nunique() > 1).sum())
    if mixed:
        warnings.warn(
            f"{mixed} lesion(s) have images with different labels; using the most "
            "frequent label of each",
            stacklevel=2,
        )
    averaged = []
    for p in probs:
        frame = pd.DataFrame(np.asarray(p, dtype=np.float64))
        mean = frame.groupby(codes).mean().to_numpy()
        averaged.append(mean / mean.sum(axis=1, keepdims=True))
    return labels.to_numpy(dtype=np.int64), np.asarray(uniques, dtype=object), averaged
