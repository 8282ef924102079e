"""Backbone + head classifier and its construction from the ``model`` config group."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from derm_exp.models.backbone import create_backbone, resolve_data_config

__all__ = ["SkinLesionClassifier", "build_model", "resolve_data_config"]


class SkinLesionClassifier(nn.Module):
    """timm backbone (no pooling/classifier) followed by a head on its (B, C, H, W) feature map."""

    def __init__(self, backbone: nn.Module, head: nn.Module, data_config: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.data_config = data_config if data_config is not None else resolve_data_config(self)
        self._backbone_frozen = False

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> backbone feature map (B, C, h, w)."""
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, num_classes)."""
        return self.head(self.forward_features(x))

    def freeze_backbone(self, frozen: bool = True) -> None:
        """(Un)freeze the backbone. A frozen backbone is a fixed feature extractor: no gradients,
        and it stays in eval mode (BN running stats and stochastic depth off) even under train()."""
        self._backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> SkinLesionClassifier:
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


def build_model(
    model_cfg: DictConfig, num_classes: int, image_size: int | None = None
) -> SkinLesionClassifier:
    """Build the classifier from a ``model`` config (name, pretrained, pretrained_file, drop_rate,
    drop_path_rate, head: {_target_, ...}); ``data_config`` gets ``image_size`` when given."""
    backbone = create_backbone(
        model_cfg.name,
        pretrained=bool(model_cfg.get("pretrained", False)),
        pretrained_file=model_cfg.get("pretrained_file"),
        drop_rate=float(model_cfg.get("drop_rate", 0.0)),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
    )
    head = instantiate(model_cfg.head, in_channels=backbone.num_features, num_classes=num_classes)
    return SkinLesionClassifier(backbone, head, resolve_data_config(backbone, image_size))
