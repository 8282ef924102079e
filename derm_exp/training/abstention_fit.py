"""Fit the abstention threshold at the end of training, on the validation split only.

Runs right after temperature scaling (:func:`derm_exp.training.final_report.final_report`): the
confidences are the validation split's max *calibrated* probabilities (single view, as
``derm_exp.predict`` sees them by default). :func:`fit_abstention` receives only validation
arrays, so test labels cannot reach the threshold; :func:`on_test` then reports the coverage
and risk the stored threshold reaches on the test split. The checkpoint entry (``abstention``)
also stores the run's TTA and input-quality limits as the model's defaults for prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
from omegaconf import DictConfig, OmegaConf

from derm_exp.config import as_list
from derm_exp.evaluation.selective import DEFAULT_COVERAGES, apply_threshold, fit_threshold
from derm_exp.inference.abstention import DEFAULT_MAX_VIEW_STD
from derm_exp.inference.input_quality import QualityThresholds

log = logging.getLogger(__name__)


def abstain_settings(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.abstain`` as a plain dict; a run configured before the key existed gets the
    defaults (coverage 0.9)."""
    block = OmegaConf.select(cfg, "abstain", default=None)
    settings = {"coverage": 0.9, "risk": None, "max_view_std": DEFAULT_MAX_VIEW_STD}
    if block is not None:
        settings.update(OmegaConf.to_container(block, resolve=True))
    settings["quality"] = QualityThresholds.from_mapping(settings.get("quality")).as_dict()
    return settings


def selective_coverages(cfg: DictConfig) -> tuple[float, ...]:
    """``evaluation.selective_coverages`` (default 0.9, 0.8)."""
    values = OmegaConf.select(cfg, "evaluation.selective_coverages", default=None)
    return DEFAULT_COVERAGES if values is None else tuple(float(v) for v in as_list(values))


def fit_abstention(
    settings: Mapping[str, Any], val_probs: np.ndarray, val_labels: np.ndarray
) -> dict[str, Any]:
    """The checkpoint's ``abstention`` entry from the validation split's calibrated
    probabilities (N, C) and labels (N,) (threshold None when no target is set)."""
    coverage, risk = settings.get("coverage"), settings.get("risk")
    entry: dict[str, Any] = {"threshold": None, "target": None}
    if coverage is not None or risk is not None:
        probs = np.asarray(val_probs, dtype=np.float64)
        correct = probs.argmax(1) == np.asarray(val_labels)
        fitted = fit_threshold(probs.max(1), correct, coverage=coverage, risk=risk)
        if not fitted["achieved"]:
            log.warning(
                "abstain.risk=%s is not reached on the validation split even by the most "
                "confident predictions: the model will abstain on everything (threshold %.4f)",
                risk,
                fitted["threshold"],
            )
        entry = {
            "threshold": fitted["threshold"],
            "target": fitted["target"],
            "achieved": fitted["achieved"],
            "fitted_on": "val",
            "val": {"coverage": fitted["coverage"], "risk": fitted["risk"], "n": fitted["n"]},
        }
    entry["confidence"] = "max calibrated probability"
    entry["max_view_std"] = settings.get("max_view_std")
    entry["quality"] = dict(settings["quality"])
    return entry


def on_test(entry: Mapping[str, Any], test_labels: Any, test_probs: Any) -> dict[str, Any] | None:
    """What the stored threshold gives on the test split (None without a threshold)."""
    if entry.get("threshold") is None:
        return None
    return apply_threshold(test_labels, test_probs, entry["threshold"])


def abstention_metrics(entry: Mapping[str, Any], test: Mapping[str, Any] | None) -> dict:
    """MLflow metrics: ``abstain/threshold``, ``abstain/val_coverage``/``_risk`` and
    ``test/abstain_coverage``/``_risk``/``_balanced_accuracy`` (those defined)."""
    if entry.get("threshold") is None:
        return {}
    values = {
        "abstain/threshold": entry["threshold"],
        "abstain/val_coverage": entry["val"]["coverage"],
        "abstain/val_risk": entry["val"]["risk"],
    }
    for key in ("coverage", "risk", "balanced_accuracy"):
        values[f"test/abstain_{key}"] = (test or {}).get(key)
    return {k: float(v) for k, v in values.items() if v is not None}


def log_abstention(entry: Mapping[str, Any], test: Mapping[str, Any] | None) -> None:
    """Tag the run with the target and say what the threshold gives on validation and test."""
    target = entry.get("target") or {}
    mlflow.set_tag("derm_exp.abstain_target", ",".join(f"{k}={v}" for k, v in target.items()))
    if entry.get("threshold") is None:
        log.info("abstention: no target (abstain.coverage and abstain.risk null), no threshold")
        return
    log.info(
        "abstention threshold %.4f (target %s, fitted on validation: coverage %.3f, risk %s); "
        "on test: coverage %.3f, risk %s",
        entry["threshold"],
        target,
        entry["val"]["coverage"],
        _fmt(entry["val"]["risk"]),
        (test or {}).get("coverage", 0.0),
        _fmt((test or {}).get("risk")),
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
