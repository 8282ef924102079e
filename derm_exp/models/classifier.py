"""Backbone + head classifier and its construction from the ``model`` config group."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from derm_exp.errors import ConfigError
from derm_exp.models.backbone import create_backbone, resolve_data_config
from derm_exp.models.fusion import MetadataFusion, metadata_method

__all__ = ["SkinLesionClassifier", "build_model", "resolve_data_config"]


class SkinLesionClassifier(nn.Module):
    """timm backbone (no pooling/classifier) followed by a head on its (B, C, H, W) feature map;
    with ``fusion`` (:mod:`derm_exp.models.fusion`) the patient metadata joins that map first."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        data_config: dict | None = None,
        fusion: MetadataFusion | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.fusion = fusion
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

    @property
    def uses_metadata(self) -> bool:
        return self.fusion is not None

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) [+ encoded metadata (B, M)] -> logits (B, num_classes).

        A metadata model given no ``metadata`` reads every image as "nothing known"; an
        image-only model ignores it."""
        features = self.forward_features(x)
        if self.fusion is not None:
            features = self.fusion(features, metadata)
        return self.head(features)

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
        """The head's parameters, and the metadata fusion's (trained with the head)."""
        fusion = list(self.fusion.parameters()) if self.fusion is not None else []
        return list(self.head.parameters()) + fusion

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


def build_model(
    model_cfg: DictConfig,
    num_classes: int,
    image_size: int | None = None,
    metadata_encoder: Any = None,
) -> SkinLesionClassifier:
    """Build the classifier from a ``model`` config (name, pretrained, pretrained_file, drop_rate,
    drop_path_rate, head: {_target_, ...}, metadata: {method, ...}); ``data_config`` gets
    ``image_size`` when given. A metadata model needs the fitted ``metadata_encoder`` (a
    :class:`~derm_exp.data.metadata_encoding.MetadataEncoder`: its ``dim`` and
    ``missing_vector()``)."""
    backbone = create_backbone(
        model_cfg.name,
        pretrained=bool(model_cfg.get("pretrained", False)),
        pretrained_file=model_cfg.get("pretrained_file"),
        drop_rate=float(model_cfg.get("drop_rate", 0.0)),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
    )
    fusion = _build_fusion(model_cfg, int(backbone.num_features), metadata_encoder)
    channels = fusion.out_channels if fusion is not None else backbone.num_features
    head = instantiate(model_cfg.head, in_channels=channels, num_classes=num_classes)
    return SkinLesionClassifier(backbone, head, resolve_data_config(backbone, image_size), fusion)


def _build_fusion(model_cfg: DictConfig, channels: int, encoder: Any) -> MetadataFusion | None:
    """The ``model.metadata`` fusion module, or None for ``method: none``."""
    if metadata_method(model_cfg) == "none":
        return None
    if encoder is None:
        raise ConfigError(
            f"model.metadata.method={model_cfg.metadata.method} needs the metadata encoder "
            "fitted on the training split (derm_exp.train fits it; a checkpoint stores it)"
        )
    dropout = float(model_cfg.metadata.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:  # checked here: hydra's instantiate would wrap the error
        raise ConfigError(f"model.metadata.dropout={dropout}: must be in [0, 1)")
    options = {k: v for k, v in model_cfg.metadata.items() if k not in ("method", "columns")}
    return instantiate(
        options,
        in_channels=channels,
        metadata_dim=int(encoder.dim),
        missing=[float(v) for v in encoder.missing_vector()],
    )
