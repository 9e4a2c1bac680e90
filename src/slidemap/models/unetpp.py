"""U-Net++ (Zhou et al., 2018): U-Net with nested, dense skip pathways.

Each skip is a chain of convolution nodes that bridge the semantic gap between encoder and
decoder features. The ``unetpp_*`` variants add spatial and/or contextual (CBAM-like) attention
after the encoder convolutions of every level.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.attention import keep_maps, make_attention
from slidemap.models.base import Decoder, SegmentationModel
from slidemap.models.blocks import DoubleConv
from slidemap.models.registry import register
from slidemap.models.unet import UNetEncoder, level_widths


class NestedDecoder(Decoder):
    """Node X[i][j] (level i, column j) convolves X[i][0..j-1] with the up-sampled X[i+1][j-1]."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.depth = len(widths) - 1
        self.nodes = nn.ModuleDict()
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                self.nodes[f"x{i}_{j}"] = DoubleConv(widths[i] * j + widths[i + 1], widths[i])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        grid = [[f] for f in features]  # grid[i][j] is X[i][j]
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                up = F.interpolate(grid[i + 1][j - 1], size=grid[i][0].shape[-2:],
                                   mode="bilinear", align_corners=False)
                grid[i].append(self.nodes[f"x{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        return grid[0][-1]


class AttentiveUNetEncoder(UNetEncoder):
    """The U-Net encoder with ``attention`` modules (``"spatial"``, ``"contextual"``) applied in
    order after the convolutions of each level; their maps are kept as ``level{i}_{kind}``."""

    def __init__(self, in_channels: int, widths: list[int], attention: tuple[str, ...]):
        super().__init__(in_channels, widths)
        self.attention = nn.ModuleList(
            nn.ModuleDict({kind: make_attention(kind, c) for kind in attention}) for c in widths
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, (stage, attention) in enumerate(
            zip(self.stages, self.attention, strict=True)
        ):
            x = stage(x)
            for module in cast(nn.ModuleDict, attention).values():
                x, maps = module(x)
                keep_maps(self.attention_maps, f"level{level}", maps)
            features.append(x)
        return features


class UNetPlusPlus(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, depth: int = 4,
                 attention: tuple[str, ...] = ()):
        widths = level_widths(width, depth)
        encoder = AttentiveUNetEncoder(in_channels, widths, attention)
        decoder = NestedDecoder(widths)
        super().__init__(encoder, decoder, nn.Conv2d(widths[0], 1, 1), stride=2**depth)


@register("unetpp")
def build_unetpp(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return UNetPlusPlus(in_channels, width, depth)


@register("unetpp_spatial")
def build_unetpp_spatial(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return UNetPlusPlus(in_channels, width, depth, attention=("spatial",))


@register("unetpp_contextual")
def build_unetpp_contextual(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return UNetPlusPlus(in_channels, width, depth, attention=("contextual",))


@register("unetpp_spatial_contextual")
def build_unetpp_spatial_contextual(in_channels: int, width: int = 32,
                                    depth: int = 4) -> SegmentationModel:
    return UNetPlusPlus(in_channels, width, depth, attention=("spatial", "contextual"))
