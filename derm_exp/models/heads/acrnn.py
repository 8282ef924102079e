"""Attention-based conv-recurrent (ACRNN) head: the H x W feature map read as a sequence."""

from __future__ import annotations

import torch
from torch import nn


class AdditiveAttentionPool(nn.Module):
    """Bahdanau-style pooling: score_t = v . tanh(W h_t), softmax over t, sum_t a_t h_t."""

    def __init__(self, in_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) -> pooled (B, D), attention weights (B, L) summing to 1."""
        scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)
        attn = torch.softmax(scores.float(), dim=1).to(h.dtype)
        return torch.bmm(attn.unsqueeze(1), h).squeeze(1), attn


class ACRNNHead(nn.Module):
    """Conv1d -> ReLU -> (bi)LSTM -> additive attention pooling -> Dropout -> Linear.

    The (B, C, H, W) map is flattened to a raster-order sequence of H*W positions, so any spatial
    size works (1x1 included). The last attention weights (B, H*W) are kept, detached, on
    ``last_attention``; ``forward(x, return_attention=True)`` also returns them.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_channels: int = 256,
        kernel_size: int = 3,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        attention_dim: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, conv_channels, kernel_size, padding="same")
        self.act = nn.ReLU(inplace=True)
        self.rnn = nn.LSTM(
            conv_channels,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # torch warns on inter-layer dropout at 1
        )
        rnn_out = hidden_size * (2 if bidirectional else 1)
        self.attention = AdditiveAttentionPool(rnn_out, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(rnn_out, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.last_attention: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> logits (B, num_classes) [, attention (B, H*W)]."""
        seq = self.act(self.conv(x.flatten(2)))  # (B, C', H*W); flatten copies channels_last input
        out, _ = self.rnn(seq.transpose(1, 2))  # (B, H*W, D)
        pooled, attn = self.attention(out)
        logits = self.fc(self.dropout(pooled))
        self.last_attention = attn.detach()
        return (logits, attn) if return_attention else logits
