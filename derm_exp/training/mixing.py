"""Batch-level mixup / cutmix from the ``augment`` config group (timm's implementation)."""

from __future__ import annotations

from omegaconf import DictConfig
from timm.data import Mixup


def build_mixup(augment_cfg: DictConfig, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` from ``mixup_alpha``, ``cutmix_alpha`` and ``mix_prob``; None when disabled.

    Call it as ``images, soft_targets = mixup(images, labels)`` on training batches only; targets
    become (B, num_classes) probabilities (one-hot when a batch is not mixed), so the criterion
    must accept soft targets (nn.CrossEntropyLoss and FocalLoss do). The batch size must be EVEN
    (timm pairs the batch with its flip and asserts it): use ``drop_last=True`` or skip mixing an
    odd final batch. Label smoothing stays in the criterion, so it is 0 here.
    """
    mixup_alpha = float(augment_cfg.get("mixup_alpha", 0.0) or 0.0)
    cutmix_alpha = float(augment_cfg.get("cutmix_alpha", 0.0) or 0.0)
    prob = float(augment_cfg.get("mix_prob", 0.0) or 0.0)
    if prob <= 0 or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=0.5,
        label_smoothing=0.0,
        num_classes=num_classes,
    )
