"""U-Net (Ronneberger et al., 2015): encoder of double convs, decoder with concatenated skips."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import Decoder, Encoder, SegmentationModel
from slidemap.models.blocks import DoubleConv
from slidemap.models.registry import register


def level_widths(width: int, depth: int) -> list[int]:
    """The channels of each U-Net level: ``width`` doubled at every down-sampling.

    A negative ``depth`` (down-samplings) would leave no level, and the encoders failed on it
    with an IndexError from deep inside; 0 is a single full-resolution level.
    """
    if depth < 0:
        raise SlidemapError(f"depth (down-samplings) must be 0 or more, e.g. 4, got {depth}")
    return [width * 2**i for i in range(depth + 1)]


class UNetEncoder(Encoder):
    """A double conv, then a max pool and a double conv per level; returns every level."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        self.channels = list(widths)
        self.stages = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        for cin, cout in itertools.pairwise(widths):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNetDecoder(Decoder):
    """Up-sample, concatenate the skip, double conv; from the coarsest level to the finest."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            DoubleConv(coarse + fine, fine)
            for coarse, fine in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, features[-2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return x


class UNet(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, depth: int = 4):
        widths = level_widths(width, depth)
        encoder = UNetEncoder(in_channels, widths)
        decoder = UNetDecoder(widths)
        super().__init__(encoder, decoder, nn.Conv2d(widths[0], 1, 1), stride=2**depth)


@register("unet")
def build_unet(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return UNet(in_channels, width, depth)
