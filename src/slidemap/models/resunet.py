"""Residual U-Net (Zhang et al., 2018): U-Net whose stages are residual blocks.

Identity shortcuts make the deeper stack easy to train from scratch; down-sampling is the stride
of each stage's first convolution rather than max pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.base import Decoder, Encoder, SegmentationModel
from slidemap.models.blocks import ResidualBlock
from slidemap.models.registry import register
from slidemap.models.unet import level_widths


class ResidualEncoder(Encoder):
    """A residual block per level, strided from the second on; returns every level, finest first.

    The first ``instance_norm_levels`` levels use instance-batch norm (IBN-a), where appearance
    lives; the coarser ones keep batch norm, as IBN-Net does.
    """

    def __init__(self, in_channels: int, widths: list[int], instance_norm_levels: int = 0):
        super().__init__()
        self.channels = list(widths)
        self.stages = nn.ModuleList(
            ResidualBlock(cin, cout, stride=1 if level == 0 else 2,
                          instance_norm=level < instance_norm_levels)
            for level, (cin, cout) in enumerate(zip([in_channels, *widths[:-1]], widths,
                                                    strict=True))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResidualDecoder(Decoder):
    """Up-sample, concatenate the skip, residual block; from the coarsest level to the finest."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            ResidualBlock(coarse + fine, fine)
            for coarse, fine in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )

    @staticmethod
    def merge(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], dim=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, features[-2::-1], strict=True):
            x = stage(self.merge(x, skip))
        return x


class ResUNet(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, depth: int = 4):
        widths = level_widths(width, depth)
        encoder = ResidualEncoder(in_channels, widths)
        decoder = ResidualDecoder(widths)
        super().__init__(encoder, decoder, nn.Conv2d(widths[0], 1, 1), stride=2**depth)


@register("resunet")
def build_resunet(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return ResUNet(in_channels, width, depth)
