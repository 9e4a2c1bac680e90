"""U-Net (Ronneberger et al., 2015): encoder of double convs, decoder with concatenated skips."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.blocks import AnySizeModel, DoubleConv
from slidemap.models.registry import register


class UNetEncoder(nn.Module):
    """Four down-sampling stages; returns the features of every level, finest first."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        self.stages = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        for cin, cout in itertools.pairwise(widths):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
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


class UNet(AnySizeModel):
    def __init__(self, in_channels: int, width: int = 32, depth: int = 4):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.stride = 2**depth
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = UNetDecoder(widths)
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register("unet")
def build_unet(in_channels: int, width: int = 32, depth: int = 4) -> nn.Module:
    return UNet(in_channels, width, depth)
