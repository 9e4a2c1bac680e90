"""PSPNet (Zhao et al., 2017) on the dilated ResNet-18-like encoder: a DA-U-Net baseline.

The stride-8 features are average-pooled into 1×1, 2×2, 3×3 and 6×6 bins; each pyramid level is
reduced, up-sampled and concatenated with the features, giving every pixel global and
sub-region context before classification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.blocks import AnySizeModel, ConvBNReLU, PooledBranch
from slidemap.models.registry import register
from slidemap.models.resnet import ResNetEncoder


class PyramidPooling(nn.Module):
    """Concatenate the features with their pooled summaries at every bin size."""

    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.levels = nn.ModuleList(PooledBranch(channels, channels // len(bins), b) for b in bins)
        self.out_channels = channels + len(bins) * (channels // len(bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(level(x) for level in self.levels)], dim=1)


class PSPNet(AnySizeModel):
    stride = 8

    def __init__(self, in_channels: int, width: int = 32, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, width, output_stride=8)
        channels = self.encoder.channels[-1]
        self.pyramid = PyramidPooling(channels, bins)
        self.head = nn.Sequential(
            ConvBNReLU(self.pyramid.out_channels, channels // 2),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels // 2, 1, 1),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.pyramid(self.encoder(x)[-1]))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("pspnet")
def build_pspnet(in_channels: int, width: int = 32) -> nn.Module:
    return PSPNet(in_channels, width)
