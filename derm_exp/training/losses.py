"""Loss functions and their construction from the ``loss`` config group."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from derm_exp.data.metadata import CLASSES
from derm_exp.data.sampling import class_weights


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017) for hard (B,) or soft (B, C) targets.

    Per sample: ``-sum_c w_c q_c (1 - p_c)^gamma log p_c`` where q is the (label-smoothed)
    target distribution. ``reduction="mean"`` divides by the summed class weight of the
    *unsmoothed* targets (``w[y]`` for hard targets), exactly like torch's weighted
    CrossEntropyLoss, so gamma=0 reproduces ``nn.CrossEntropyLoss(weight, label_smoothing)`` and a
    one-hot soft target gives the same loss as its hard label. Written by hand because torchvision's
    sigmoid_focal_loss is binary/multi-label, not softmax multi-class.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if reduction not in {"mean", "sum", "none"}:
            raise ValueError(f"reduction must be mean|sum|none, got {reduction!r}")
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C); target (B,) class indices or (B, C) probabilities."""
        logits = logits.float()  # stable log-softmax under autocast
        num_classes = logits.shape[1]
        q = F.one_hot(target.long(), num_classes).float() if target.ndim == 1 else target.float()
        weight = self.weight if self.weight is not None else logits.new_ones(num_classes)
        norm = (q * weight).sum(1)  # per-sample weight of the unsmoothed target
        if self.label_smoothing > 0:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        log_p = F.log_softmax(logits, dim=1)
        loss_terms = weight * q * log_p
        if self.gamma > 0:
            # 1 - p via expm1 for precision; the floor keeps d/dp finite for gamma < 1 when p == 1
            loss_terms = loss_terms * (-torch.expm1(log_p)).clamp(min=1e-12).pow(self.gamma)
        loss = -loss_terms.sum(1)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / norm.sum()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, label_smoothing={self.label_smoothing}"


def build_criterion(loss_cfg: DictConfig, class_weights: torch.Tensor | None = None) -> nn.Module:
    """Instantiate ``loss_cfg.criterion`` with ``weight=class_weights`` (None = unweighted)."""
    return instantiate(loss_cfg.criterion, weight=class_weights)


def loss_class_weights(loss_cfg: DictConfig, train_labels: np.ndarray) -> torch.Tensor | None:
    """``loss.class_weights=inverse_frequency``: per-class weights from the training split's
    labels (``clamp((1/freq) ** power)``, mean 1); None for ``null``."""
    if loss_cfg.class_weights == "inverse_frequency":
        power, clamp = loss_cfg.class_weight_power, loss_cfg.class_weight_clamp
        return class_weights(train_labels, len(CLASSES), power, clamp)
    if loss_cfg.class_weights is not None:
        raise ValueError(
            f"loss.class_weights={loss_cfg.class_weights!r}: choose null or inverse_frequency"
        )
    return None
