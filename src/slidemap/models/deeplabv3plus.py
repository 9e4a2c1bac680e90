"""DeepLabV3+ (Chen et al., 2018) on the ResNet-18-like encoder at output stride 16: a DA-U-Net
baseline.

ASPP (1×1, 3×3 at rates 6, 12, 18, and image pooling) gathers multi-scale context; a light decoder
refines it with the stride-4 low-level features for sharper boundaries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.blocks import ASPP, AnySizeModel, ConvBNReLU
from slidemap.models.registry import register
from slidemap.models.resnet import ResNetEncoder

RATES = (1, 6, 12, 18)


class DeepLabV3PlusDecoder(nn.Module):
    """Up-sample the ASPP output ×4, concatenate the reduced low-level features, two 3×3 convs."""

    def __init__(self, low_channels: int, aspp_channels: int, low_reduced: int):
        super().__init__()
        self.reduce = ConvBNReLU(low_channels, low_reduced, kernel=1)
        self.refine = nn.Sequential(
            ConvBNReLU(aspp_channels + low_reduced, aspp_channels),
            ConvBNReLU(aspp_channels, aspp_channels),
        )

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear",
                                align_corners=False)
        return self.refine(torch.cat([context, self.reduce(low)], dim=1))


class DeepLabV3Plus(AnySizeModel):
    stride = 16

    def __init__(self, in_channels: int, width: int = 32, rates: tuple[int, ...] = RATES):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, width, output_stride=16)
        channels = self.encoder.channels
        aspp_channels = channels[-2]  # 4w: 256 of 2048 in the paper, 128 of 256 here
        self.aspp = nn.Sequential(
            ASPP(channels[-1], aspp_channels, rates, image_pooling=True, pointwise_rate_one=True),
            nn.Dropout2d(0.1),
        )
        self.decoder = DeepLabV3PlusDecoder(channels[1], aspp_channels, max(3 * width // 2, 8))
        self.head = nn.Conv2d(aspp_channels, 1, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        logits = self.head(self.decoder(self.aspp(features[-1]), features[1]))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("deeplabv3plus")
def build_deeplabv3plus(in_channels: int, width: int = 32) -> nn.Module:
    return DeepLabV3Plus(in_channels, width)
