"""Post-hoc logit adjustment towards balanced decisions (Menon et al., ICLR 2021, "Long-tail
learning via logit adjustment"), fitted on validation after the last epoch.

A model trained on a re-weighted class mix (``data.sampler=weighted``, ``loss.class_weights``)
learns scores for ``p(x | y) * pi_train(y)``, where ``pi_train`` is the class mix the loss saw.
Balanced accuracy is maximised by ``argmax p(x | y)``, so subtracting ``tau * log pi_train`` from
the logits moves the decisions towards it: ``tau = 0`` is the model as trained, ``tau = 1`` the
full correction. ``tau`` is chosen from ``trainer.logit_adjustment.tau_grid`` by validation
balanced accuracy (ties: the smallest), or set as a number. The offset is folded into the bias of
the head's output layer, so every inference path (predictor, registry pyfunc, ensembles, ONNX)
applies it without knowing about it; the temperature is fitted afterwards, on the adjusted
logits. The trade: decisions balanced over classes cost accuracy on the natural class mix
(fewer ``nv`` predictions), which the run's own test metrics show.

Written here because no library we use has it: scikit-learn's ``TunedThresholdClassifierCV``
tunes one binary threshold only.
"""

from __future__ import annotations

import logging
from numbers import Real
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from derm_exp.errors import ConfigError
from derm_exp.evaluation.metrics import balanced_accuracy

log = logging.getLogger(__name__)

__all__ = [
    "adjust_on_validation",
    "log_adjustment",
    "adjustment_problems",
    "adjustment_settings",
    "fit_tau",
    "training_prior",
]


def adjustment_problems(cfg: DictConfig) -> list[str]:
    """What is wrong with ``trainer.logit_adjustment`` (torch-free, for
    :func:`derm_exp.training.validate.validate_config`); empty when it is fine or absent."""
    section = OmegaConf.select(cfg, "trainer.logit_adjustment", default=None)
    if section is None:
        return []
    enabled = section.get("enabled", False)
    tau = section.get("tau", "fit")
    grid = section.get("tau_grid", None)
    problems = []
    if not isinstance(enabled, bool):
        problems.append(f"trainer.logit_adjustment.enabled={enabled!r} must be true or false")
    if tau != "fit" and (isinstance(tau, bool) or not isinstance(tau, Real)):
        problems.append(f"trainer.logit_adjustment.tau={tau!r}: use fit or a number (0 = off)")
    values = list(grid) if OmegaConf.is_list(grid) or isinstance(grid, list) else None
    if tau == "fit" and (
        not values or any(isinstance(v, bool) or not isinstance(v, Real) for v in values)
    ):
        problems.append(
            f"trainer.logit_adjustment.tau_grid={grid!r} must be a non-empty list of numbers"
        )
    return problems


def adjustment_settings(cfg: DictConfig) -> tuple[bool, float | str, list[float]]:
    """``(enabled, tau, tau_grid)`` of ``trainer.logit_adjustment`` (absent: off); a
    :class:`ConfigError` for bad values. ``tau`` is ``"fit"`` or a number."""
    problems = adjustment_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    section = OmegaConf.select(cfg, "trainer.logit_adjustment", default=None)
    if section is None or not section.get("enabled", False):
        return False, "fit", []
    tau = section.get("tau", "fit")
    grid = [float(v) for v in section.get("tau_grid", None) or []]
    return True, (tau if tau == "fit" else float(tau)), grid


def training_prior(
    train_labels: np.ndarray,
    num_classes: int,
    sampler_power: float | None,
    loss_weights: Any = None,
) -> np.ndarray:
    """The class mix the loss saw, shape ``(num_classes,)``, summing to 1: the training split's
    counts ``n_c``, times ``n_c ** -sampler_power`` under the weighted sampler (None: no sampler),
    times the loss's class weights. Classes absent from training get 0."""
    # Not derm_exp.data.sampling.class_counts: that module imports torch, and this one must stay
    # torch-free for validate_config (python -m derm_exp.train checks before torch loads).
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    mix = counts.astype(np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("training_prior: no training labels")
    if sampler_power is not None:
        mix[present] *= counts[present].astype(np.float64) ** -float(sampler_power)
    if loss_weights is not None:
        mix *= np.asarray(loss_weights, dtype=np.float64)
    return mix / mix.sum()


def log_prior_offsets(prior: np.ndarray) -> np.ndarray:
    """``log pi`` per class, centred over the classes present (0 for absent classes, which the
    adjustment then leaves alone); centring keeps the logits' scale and the softmax unchanged."""
    logs = np.zeros_like(prior, dtype=np.float64)
    present = prior > 0
    logs[present] = np.log(prior[present])
    logs[present] -= logs[present].mean()
    return logs


def fit_tau(
    val_logits: np.ndarray, val_labels: np.ndarray, log_prior: np.ndarray, grid: list[float]
) -> tuple[float, dict[float, float]]:
    """The ``tau`` of ``grid`` with the highest validation balanced accuracy of
    ``argmax(logits - tau * log_prior)`` (ties: the smallest ``|tau|``), and every score."""
    scores = {
        float(tau): balanced_accuracy(val_labels, (val_logits - tau * log_prior).argmax(1))
        for tau in grid
    }
    best = max(scores.values())
    return min((t for t, s in scores.items() if s == best), key=abs), scores


def _output_layer(model: Any, num_classes: int) -> Any:
    """The head's last ``nn.Linear`` with ``num_classes`` outputs and a bias (the logits)."""
    from torch import nn

    head = getattr(model, "head", model)
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers or layers[-1].out_features != num_classes or layers[-1].bias is None:
        raise ConfigError(
            "trainer.logit_adjustment needs a head whose last layer is a Linear with a bias "
            f"and {num_classes} outputs; this model's head is {type(head).__name__}: set "
            "trainer.logit_adjustment.enabled=false"
        )
    return layers[-1]


def adjust_on_validation(
    cfg: DictConfig,
    model: Any,
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    train_labels: np.ndarray,
    loss_weights: Any = None,
) -> tuple[np.ndarray, dict | None]:
    """Fit (or apply the configured) ``tau``, fold ``-tau * log pi_train`` into the head's
    output bias, and return the adjusted validation logits with a summary for the checkpoint
    and MLflow (None when ``trainer.logit_adjustment.enabled`` is false)."""
    enabled, tau_setting, grid = adjustment_settings(cfg)
    if not enabled:
        return val_logits, None
    import torch

    num_classes = val_logits.shape[1]
    layer = _output_layer(model, num_classes)
    power = float(cfg.data.sampler_power) if cfg.data.sampler == "weighted" else None
    prior = training_prior(train_labels, num_classes, power, loss_weights)
    log_prior = log_prior_offsets(prior)
    if tau_setting == "fit":
        tau, scores = fit_tau(val_logits, val_labels, log_prior, grid)
    else:
        tau, scores = float(tau_setting), {}
    offsets = -tau * log_prior
    with torch.no_grad():
        layer.bias.add_(torch.as_tensor(offsets, dtype=layer.bias.dtype, device=layer.bias.device))
    adjusted = val_logits + offsets.astype(val_logits.dtype)
    summary = {
        "tau": tau,
        "training_prior": [float(p) for p in prior],
        "offsets": [float(o) for o in offsets],
        "val_balanced_accuracy": {
            "before": balanced_accuracy(val_labels, val_logits.argmax(1)),
            "after": balanced_accuracy(val_labels, adjusted.argmax(1)),
        },
        "tau_scores": {str(t): s for t, s in scores.items()},
    }
    return adjusted, summary


def log_adjustment(adjustment: dict) -> None:
    """Log a fitted adjustment to the active MLflow run (``logit_adjustment/*`` metrics and
    ``evaluation/logit_adjustment.json``) and to the log."""
    import mlflow

    scores = adjustment["val_balanced_accuracy"]
    mlflow.log_metrics(
        {
            "logit_adjustment/tau": adjustment["tau"],
            "logit_adjustment/val_balanced_accuracy_before": scores["before"],
            "logit_adjustment/val_balanced_accuracy_after": scores["after"],
        }
    )
    mlflow.log_dict(adjustment, "evaluation/logit_adjustment.json")
    log.info(
        "logit adjustment: tau=%.2f, validation balanced accuracy %.4f -> %.4f",
        adjustment["tau"],
        scores["before"],
        scores["after"],
    )
