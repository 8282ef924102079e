"""MLP head on globally average-pooled features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SimpleHead(nn.Module):
    """Pool -> Dropout -> [Linear -> BN -> ReLU -> Dropout] per hidden dim -> Linear(classes).

    With the default ``hidden_dims=(512, 256)``: global avg pool -> Dropout -> Linear(C, 512) ->
    BN -> ReLU -> Dropout -> Linear(512, 256) -> BN -> ReLU -> Dropout -> Linear(256, classes).
    BatchNorm1d needs batches of >= 2 samples in train mode.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512, 256),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = in_channels
        for dim in (int(d) for d in hidden_dims):
            layers += [nn.Linear(width, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            layers.append(nn.Dropout(dropout))
            width = dim
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map -> (B, num_classes) logits."""
        return self.mlp(self.pool(x).flatten(1))
