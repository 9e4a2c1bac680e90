"""PSPNet (Zhao et al., 2017) on the dilated ResNet-18-like encoder: a DA-U-Net baseline.

The stride-8 features are average-pooled into 1×1, 2×2, 3×3 and 6×6 bins; each pyramid level is
reduced, up-sampled and concatenated with the features, giving every pixel global and
sub-region context before classification. The pyramid is the decoder; the head reduces,
drops out and classifies.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemap.models.base import Decoder, SegmentationModel
from slidemap.models.blocks import ConvBNReLU, PooledBranch
from slidemap.models.registry import register
from slidemap.models.resnet import ResNetEncoder


class PyramidPooling(Decoder):
    """Concatenate the coarsest features with their pooled summaries at every bin size."""

    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.levels = nn.ModuleList(PooledBranch(channels, channels // len(bins), b) for b in bins)
        self.out_channels = channels + len(bins) * (channels // len(bins))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        return torch.cat([x, *(level(x) for level in self.levels)], dim=1)


class PSPNet(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, bins: tuple[int, ...] = (1, 2, 3, 6)):
        encoder = ResNetEncoder(in_channels, width, output_stride=8)
        channels = encoder.channels[-1]
        decoder = PyramidPooling(channels, bins)
        head = nn.Sequential(
            ConvBNReLU(decoder.out_channels, channels // 2),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels // 2, 1, 1),
        )
        super().__init__(encoder, decoder, head, stride=8)


@register("pspnet")
def build_pspnet(in_channels: int, width: int = 32) -> SegmentationModel:
    return PSPNet(in_channels, width)
