"""Patient-metadata fusion: the encoded metadata vector joins the backbone's feature map.

Both methods act on the (B, C, H, W) feature map before the head, so they work with every head
and backbone unchanged:

* :class:`ConcatFusion`: an MLP over the metadata, its output broadcast over H x W and
  concatenated as extra channels. After the simple head's average pooling this is exactly
  "pooled image features ++ metadata embedding"; the ACRNN head reads it at every position.
* :class:`FiLMFusion`: the metadata gives a per-channel scale and shift (FiLM, Perez et al.
  2018): ``f * (1 + gamma) + beta``. Affine per channel commutes with average pooling, so it
  scales/shifts the pooled features; it starts as the identity (last layer zero-initialised).

``dropout`` (``model.metadata.dropout``) replaces a training sample's whole metadata by the
"nothing known" vector (every missing flag set) with that probability, so the model also
learns to classify images whose metadata is unknown; ``metadata=None`` at inference means
exactly that vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from derm_exp.errors import ConfigError

METHODS = ("none", "concat", "film")


def metadata_method(model_cfg: Mapping[str, Any]) -> str:
    """``model.metadata.method`` (``none`` for configs from before metadata fusion)."""
    meta = model_cfg.get("metadata") or {}
    method = str(meta.get("method", "none"))
    if method not in METHODS:
        raise ConfigError(f"model.metadata.method={method!r}: choose one of {', '.join(METHODS)}")
    return method


class MetadataFusion(nn.Module):
    """Base: holds the "nothing known" vector and applies metadata dropout."""

    def __init__(
        self, in_channels: int, metadata_dim: int, missing: Sequence[float], dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.metadata.dropout={dropout}: must be in [0, 1)")
        if len(missing) != metadata_dim:
            raise ValueError(f"missing vector of {len(missing)} values for dim {metadata_dim}")
        self.in_channels = int(in_channels)
        self.metadata_dim = int(metadata_dim)
        self.dropout = float(dropout)
        # Not persistent: rebuilt from the checkpoint's stored encoder, not from the weights.
        self.register_buffer(
            "missing", torch.tensor(list(missing), dtype=torch.float32), persistent=False
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def prepare(self, metadata: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        """(B, M) metadata on the features' device/dtype; None -> the missing vector; in
        training, rows dropped to missing with probability ``dropout``."""
        batch = features.shape[0]
        missing = self.missing.to(features.device)
        if metadata is None:
            return missing.expand(batch, -1).to(features.dtype)
        metadata = metadata.to(features.device, torch.float32)
        if metadata.shape != (batch, self.metadata_dim):
            raise ValueError(
                f"metadata of shape {tuple(metadata.shape)}, expected ({batch}, "
                f"{self.metadata_dim})"
            )
        if self.training and self.dropout > 0:
            drop = torch.rand(batch, 1, device=features.device) < self.dropout
            metadata = torch.where(drop, missing.expand_as(metadata), metadata)
        return metadata.to(features.dtype)


class ConcatFusion(MetadataFusion):
    """Metadata MLP (Linear -> ReLU -> Linear -> ReLU) concatenated as ``hidden_dim`` extra
    channels of the feature map."""

    def __init__(
        self,
        in_channels: int,
        metadata_dim: int,
        missing: Sequence[float],
        dropout: float = 0.0,
        hidden_dim: int = 32,
    ) -> None:
        super().__init__(in_channels, metadata_dim, missing, dropout)
        self.hidden_dim = int(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.metadata_dim, self.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden_dim, self.hidden_dim),
            nn.ReLU(inplace=True),
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.hidden_dim

    def forward(self, features: torch.Tensor, metadata: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(self.prepare(metadata, features))
        h, w = features.shape[-2:]
        extra = emb[:, :, None, None].expand(-1, -1, h, w)
        return torch.cat([features, extra.to(features.dtype)], dim=1)


class FiLMFusion(MetadataFusion):
    """Metadata -> per-channel ``gamma``, ``beta``: ``features * (1 + gamma) + beta``."""

    def __init__(
        self,
        in_channels: int,
        metadata_dim: int,
        missing: Sequence[float],
        dropout: float = 0.0,
        hidden_dim: int = 64,
    ) -> None:
        super().__init__(in_channels, metadata_dim, missing, dropout)
        self.hidden_dim = int(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(self.metadata_dim, self.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden_dim, 2 * self.in_channels),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # identity at the start: image features untouched
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, metadata: torch.Tensor | None) -> torch.Tensor:
        gamma, beta = self.mlp(self.prepare(metadata, features)).chunk(2, dim=1)
        gamma = gamma[:, :, None, None].to(features.dtype)
        beta = beta[:, :, None, None].to(features.dtype)
        return features * (1 + gamma) + beta
