"""After the last epoch: reload the best weights, calibrate on validation, evaluate on test."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from derm_exp.data.metadata import CLASSES  # noqa: E402
from derm_exp.evaluation import plots  # noqa: E402
from derm_exp.evaluation.calibration import fit_temperature  # noqa: E402
from derm_exp.evaluation.metrics import classification_metrics, scalar_metrics  # noqa: E402
from derm_exp.inference.tta import aggregate, check_views  # noqa: E402
from derm_exp.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from derm_exp.training.data_setup import Loaders  # noqa: E402
from derm_exp.training.loop import StepContext, predict_logits  # noqa: E402
from derm_exp.training.selection import warn_if_degenerate  # noqa: E402

log = logging.getLogger(__name__)


def tta_probabilities(logits: np.ndarray, temperature: float, aggregation: str) -> np.ndarray:
    """Softmax of (V, N, C) or (N, C) logits at ``temperature``, views aggregated."""
    t = torch.from_numpy(logits) / temperature
    if t.ndim == 2:
        return torch.softmax(t, -1).numpy()
    return aggregate(torch.softmax(t, -1), aggregation).numpy()


def final_report(
    cfg: DictConfig,
    model: torch.nn.Module,
    best_path: Path,
    loaders: Loaders,
    ctx: StepContext,
    history: dict[str, list[float]],
) -> dict:
    """Evaluate the selected checkpoint on the test split and log metrics and plots to MLflow.

    The temperature is fitted on the validation split only and stored in the best checkpoint.
    """
    ck = load_checkpoint(best_path)
    model.load_state_dict(ck["model"])
    val_logits, val_labels = predict_logits(model, loaders.val, ctx, desc="val (best)")
    degenerate = warn_if_degenerate(val_logits.argmax(1), list(CLASSES), "selected checkpoint")
    mlflow.set_tag("derm_exp.degenerate_model", str(degenerate).lower())
    temperature = fit_temperature(val_logits, val_labels)
    save_checkpoint({**ck, "temperature": temperature}, best_path)

    views = check_views(list(cfg.tta.views))
    test_logits, test_labels = predict_logits(model, loaders.test, ctx, views=views, desc="test")
    probs = tta_probabilities(test_logits, 1.0, cfg.tta.aggregation)
    calibrated = tta_probabilities(test_logits, temperature, cfg.tta.aggregation)
    result = classification_metrics(test_labels, probs, CLASSES)
    after = classification_metrics(test_labels, calibrated, CLASSES)
    flat = {f"test/{k}": v for k, v in scalar_metrics(result).items()}
    flat.update(
        {
            "test/ece_calibrated": after["ece"],
            "test/nll_calibrated": after["nll"],
            "temperature": temperature,
        }
    )
    mlflow.log_metrics(flat)
    mlflow.log_dict(
        {
            "test": result,
            "test_calibrated": after,
            "temperature": temperature,
            "tta": {"views": views, "aggregation": cfg.tta.aggregation},
            "selected": ck["best"],
        },
        "evaluation/test_metrics.json",
    )

    figures = {
        "training_curves": plots.plot_training_curves(
            {k: v for k, v in history.items() if k != "epoch"}
        ),
        "confusion_matrix": plots.plot_confusion_matrix(
            np.asarray(result["confusion_matrix"]),
            CLASSES,
            normalize=True,
            title="Test confusion matrix (row-normalised)",
        ),
        "roc_curves": plots.plot_roc_curves(test_labels, probs, CLASSES),
        "calibration": plots.plot_reliability(calibrated, test_labels),
        "per_class": plots.plot_per_class_bars(result["per_class"], CLASSES),
    }
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
    log.info(
        "test: balanced accuracy %.4f, macro-F1 %.4f, ECE %.4f -> %.4f (T=%.2f)",
        result["balanced_accuracy"],
        result["macro_f1"],
        result["ece"],
        after["ece"],
        temperature,
    )
    return result
