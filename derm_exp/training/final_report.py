"""After the last epoch: reload the best weights, calibrate on validation, evaluate on test.

The report itself (metrics, lesion-level bootstrap CIs, JSON, figures) is
:mod:`derm_exp.evaluation.report`, shared with ``python -m derm_exp.evaluate``. Logged to the
training run: ``test/*`` metrics (with ``*_ci_low``/``*_ci_high`` and ``*_calibrated``),
``temperature``, ``test/subgroup_gap_*`` with ``evaluation/subgroups.csv`` and
``plots/subgroups.png`` (per sex, age band and body site: ``evaluation.subgroups``), the
abstention threshold fitted on validation (:mod:`.abstention_fit`:
``abstain/*``, ``test/abstain_*``, ``test/aurc``, ``test/selective_*_cov90``, stored in the
checkpoint), ``evaluation/test_metrics.json`` and ``plots/*.png`` (+ training curves), the
explanation gallery (``explanations/*.png``, ``explain/*`` metrics; ``explain.gallery``), and
the training-curve verdict of :mod:`derm_exp.training.diagnosis`: tag ``derm_exp.fit_diagnosis``
(+ ``_reason``), ``fit/*`` metrics and ``evaluation/fit_diagnosis.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from derm_exp.data.metadata import CLASSES
from derm_exp.data.metadata_join import metadata_csv_for, with_patient_metadata
from derm_exp.data.splits import load_split_csv
from derm_exp.evaluation import plots
from derm_exp.evaluation.calibration import apply_temperature, fit_temperature
from derm_exp.evaluation.report import evaluate_predictions, log_evaluation
from derm_exp.evaluation.subgroup_report import gaps_line, subgroup_report, subgroup_settings
from derm_exp.explanations.gallery import log_training_gallery
from derm_exp.inference.tta import check_views, views_to_probabilities
from derm_exp.models.checkpoint import load_checkpoint, save_checkpoint
from derm_exp.training import abstention_fit
from derm_exp.training.data_setup import Loaders, skipped_images
from derm_exp.training.diagnosis import FitDiagnosis, diagnose
from derm_exp.training.logit_adjustment import adjust_on_validation, log_adjustment
from derm_exp.training.loop import StepContext, predict_logits
from derm_exp.training.losses import loss_class_weights
from derm_exp.training.selection import warn_if_degenerate

log = logging.getLogger(__name__)


def tta_probabilities(logits: np.ndarray, temperature: float, aggregation: str) -> np.ndarray:
    """Softmax of (V, N, C) or (N, C) logits at ``temperature``, views aggregated."""
    return views_to_probabilities(logits, temperature, aggregation)


def _test_lesions(best_path: Path, n: int) -> list[str] | None:
    """Lesion ids of the test images, from the split CSV the trainer saved beside the checkpoint
    (same rows, same order as the test loader); None when unavailable."""
    path = Path(best_path).parent / "splits" / "test.csv"
    if not path.is_file():
        return None
    lesions = load_split_csv(path)["lesion_id"].astype(str).tolist()
    return lesions if len(lesions) == n else None


def test_subgroups(
    cfg: DictConfig, best_path: Path, labels: np.ndarray, calibrated: np.ndarray
) -> dict | None:
    """Per sex, age band and body site of the test split (the calibrated probabilities; the
    metadata of the run's dataset): :mod:`derm_exp.evaluation.subgroup_report`. None when
    ``evaluation.subgroups.enabled=false`` or the saved test split does not match the loader."""
    settings = OmegaConf.select(cfg, "evaluation.subgroups", default=None)
    if not subgroup_settings(settings)[0]:
        return None
    path = Path(best_path).parent / "splits" / "test.csv"
    frame = load_split_csv(path) if path.is_file() else None
    if frame is None or len(frame) != len(labels):
        log.warning("no subgroup report: the saved test split does not match the test images")
        return None
    frame = with_patient_metadata(frame, metadata_csv_for(cfg.data))
    bootstrap = {"n_boot": int(cfg.evaluation.n_boot), "seed": int(cfg.seed)}
    section = subgroup_report(
        frame, labels, calibrated, CLASSES, settings=settings, bootstrap=bootstrap
    )
    log.info("test %s", gaps_line(section))
    return section


def log_fit_diagnosis(diagnosis: FitDiagnosis) -> None:
    """Log the verdict to the active MLflow run (tags, ``fit/*`` metrics, JSON) and the log."""
    mlflow.set_tags(
        {
            "derm_exp.fit_diagnosis": diagnosis.verdict,
            "derm_exp.fit_diagnosis_reason": diagnosis.reason,
        }
    )
    mlflow.log_metrics({f"fit/{k}": v for k, v in diagnosis.numbers.items()})
    mlflow.log_dict(diagnosis.as_dict(), "evaluation/fit_diagnosis.json")
    log.info("%s", diagnosis.summary())


def calibrate_on_validation(
    cfg: DictConfig,
    model: torch.nn.Module,
    ck: dict,
    best_path: Path,
    val: tuple[np.ndarray, np.ndarray],
    train_labels: np.ndarray,
) -> tuple[float, dict, dict | None]:
    """On validation only (never test labels): the logit adjustment (``trainer.logit_adjustment``,
    folded into ``model``'s head), then the temperature and the abstention threshold; all saved
    in the best checkpoint. Returns ``(temperature, abstention, adjustment or None)``."""
    val_logits, val_labels = val
    weights = loss_class_weights(cfg.loss, train_labels)
    val_logits, adjustment = adjust_on_validation(
        cfg, model, val_logits, val_labels, train_labels, weights
    )
    temperature = fit_temperature(val_logits, val_labels)
    abstention = abstention_fit.fit_abstention(
        abstention_fit.abstain_settings(cfg), apply_temperature(val_logits, temperature), val_labels
    )
    saved = {**ck, "temperature": temperature, "abstention": abstention}
    if adjustment is not None:
        weights_now = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        saved |= {"model": weights_now, "logit_adjustment": adjustment}
        log_adjustment(adjustment)
    save_checkpoint(saved, best_path)
    return temperature, abstention, adjustment


def final_report(
    cfg: DictConfig,
    model: torch.nn.Module,
    best_path: Path,
    loaders: Loaders,
    ctx: StepContext,
    history: dict[str, list[float]],
) -> dict:
    """Evaluate the selected checkpoint on the test split and log metrics and plots to MLflow.

    The logit adjustment, temperature and abstention threshold are fitted on the validation split
    only and stored in the best checkpoint (:func:`calibrate_on_validation`).
    Bootstrap CIs resample test lesions (skipped when the saved split cannot be matched).
    """
    ck = load_checkpoint(best_path)
    model.load_state_dict(ck["model"])
    val_logits, val_labels = predict_logits(model, loaders.val, ctx, desc="val (best)")
    degenerate = warn_if_degenerate(val_logits.argmax(1), list(CLASSES), "selected checkpoint")
    mlflow.set_tag("derm_exp.degenerate_model", str(degenerate).lower())
    temperature, abstention, adjustment = calibrate_on_validation(
        cfg, model, ck, best_path, (val_logits, val_labels), loaders.train_labels
    )

    views = check_views(list(cfg.tta.views))
    test_logits, test_labels = predict_logits(model, loaders.test, ctx, views=views, desc="test")
    probs = tta_probabilities(test_logits, 1.0, cfg.tta.aggregation)
    calibrated = tta_probabilities(test_logits, temperature, cfg.tta.aggregation)
    lesions = _test_lesions(best_path, len(test_labels))
    result = evaluate_predictions(
        test_labels,
        probs,
        CLASSES,
        lesions,
        int(cfg.evaluation.n_boot) if lesions else 0,
        int(cfg.seed),
        calibrated_probs=calibrated,
        coverages=abstention_fit.selective_coverages(cfg),
    )
    on_test = abstention_fit.on_test(abstention, test_labels, calibrated)
    result["abstention"] = {**abstention, "on_data": on_test}
    result["subgroups"] = test_subgroups(cfg, best_path, test_labels, calibrated)
    abstention_fit.log_abstention(abstention, on_test)
    curves = plots.plot_training_curves({k: v for k, v in history.items() if k != "epoch"})
    log_evaluation(
        result,
        probs,
        test_labels,
        CLASSES,
        "test/",
        calibrated_probs=calibrated,
        json_name="evaluation/test_metrics.json",
        json_payload={
            "test": result,
            "test_calibrated": result["calibrated"],
            "temperature": temperature,
            "logit_adjustment": adjustment,
            "abstention": result["abstention"],
            "tta": {"views": views, "aggregation": cfg.tta.aggregation},
            "selected": ck["best"],
        },
        extra_metrics={
            "temperature": temperature,
            **abstention_fit.abstention_metrics(abstention, on_test),
        },
        extra_figures={"training_curves": curves},
        title="Test",
    )
    test = loaders.test.dataset
    log_training_gallery(cfg, model, test.paths, test_labels, probs, CLASSES, test.metadata)
    log.info(
        "test: balanced accuracy %.4f, macro-F1 %.4f, ECE %.4f -> %.4f (T=%.2f)",
        result["balanced_accuracy"],
        result["macro_f1"],
        result["ece"],
        result["calibrated"]["ece"],
        temperature,
    )
    trainer = cfg.trainer
    log_fit_diagnosis(diagnose(history, trainer.monitor, trainer.monitor_mode, degenerate))
    return result


def report_skipped_images(loaders: Loaders) -> None:
    """After training: warn about skipped images, tag the run with their count, log the list."""
    bad = skipped_images(loaders)
    mlflow.set_tag("derm_exp.skipped_images", len(bad))
    if bad:
        mlflow.log_text("\n".join(bad) + "\n", "data/skipped_images.txt")
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        log.warning(
            "%d unreadable image(s) were skipped (data.on_bad_image=skip): %s. Check the dataset "
            "with `python -m derm_exp.prepare_data`, or set data.on_bad_image=error to stop.",
            len(bad),
            shown,
        )
