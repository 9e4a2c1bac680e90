"""Attention modules shared by the U-Net++ variants and the fusion network.

Every module returns ``(features, maps)``: the re-weighted features and a dict of the attention
maps it applied, named by kind, so models can keep them in ``attention_maps`` for display.
"""

from __future__ import annotations

import torch
from torch import nn

Maps = dict[str, torch.Tensor]


class SpatialAttention(nn.Module):
    """Where to look: channel-wise mean and max → 7×7 conv → sigmoid, a (B, 1, H, W) weight."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Maps]:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        weight = torch.sigmoid(self.conv(pooled))
        return x * weight, {"spatial": weight}


class ChannelAttention(nn.Module):
    """What to look at: global mean and max pooling through a shared MLP → sigmoid, (B, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, min(channels, 4))
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Maps]:
        mean = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        weight = torch.sigmoid(self.mlp(mean) + self.mlp(peak))
        return x * weight, {"channel": weight}


class ContextualAttention(nn.Module):
    """Channel attention, then spatial attention (CBAM, Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Maps]:
        x, channel = self.channel(x)
        x, spatial = self.spatial(x)
        return x, {"contextual_channel": channel["channel"],
                   "contextual_spatial": spatial["spatial"]}


def make_attention(kind: str, channels: int) -> nn.Module:
    """``"spatial"`` or ``"contextual"`` attention for ``channels`` features."""
    if kind == "spatial":
        return SpatialAttention()
    if kind == "contextual":
        return ContextualAttention(channels)
    raise ValueError(f"unknown attention {kind!r}: choose spatial or contextual")


def keep_maps(store: Maps, prefix: str, maps: Maps) -> None:
    """Keep detached copies of ``maps`` in ``store`` as ``{prefix}_{name}`` (for display only)."""
    for name, value in maps.items():
        store[f"{prefix}_{name}"] = value.detach()
