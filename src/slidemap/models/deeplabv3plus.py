"""DeepLabV3+ (Chen et al., 2018) on the ResNet-18-like encoder at output stride 16: a DA-U-Net
baseline.

ASPP (1×1, 3×3 at rates 6, 12, 18, and image pooling) gathers multi-scale context; a light decoder
refines it with the stride-4 low-level features for sharper boundaries. The rates are the paper's,
for 513 px crops; at 256 px windows the coarsest features are 16 × 16, so a rate of 16 or more
reads only padding off its centre tap, those taps never learn, and a map predicted in larger
windows then reads them untrained: ``rates`` picks others (e.g. ``(1, 3, 6, 9)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import Decoder, SegmentationModel
from slidemap.models.blocks import ASPP, ConvBNReLU
from slidemap.models.registry import register
from slidemap.models.resnet import ResNetEncoder

RATES = (1, 6, 12, 18)


class DeepLabV3PlusDecoder(Decoder):
    """ASPP (and dropout) on the coarsest features, up-sampled to the stride-4 level and
    concatenated with its reduced features, then two 3×3 convs."""

    def __init__(self, channels: list[int], aspp_channels: int, low_reduced: int,
                 rates: tuple[int, ...]):
        super().__init__()
        self.aspp = nn.Sequential(
            ASPP(channels[-1], aspp_channels, rates, image_pooling=True, pointwise_rate_one=True),
            nn.Dropout2d(0.1),
        )
        self.reduce = ConvBNReLU(channels[1], low_reduced, kernel=1)
        self.refine = nn.Sequential(
            ConvBNReLU(aspp_channels + low_reduced, aspp_channels),
            ConvBNReLU(aspp_channels, aspp_channels),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = features[1]
        context = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear",
                                align_corners=False)
        return self.refine(torch.cat([context, self.reduce(low)], dim=1))


class DeepLabV3Plus(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, rates: tuple[int, ...] = RATES):
        _check_rates(rates)
        encoder = ResNetEncoder(in_channels, width, output_stride=16)
        aspp_channels = encoder.channels[-2]  # 4w: 256 of 2048 in the paper, 128 of 256 here
        decoder = DeepLabV3PlusDecoder(encoder.channels, aspp_channels, max(3 * width // 2, 8),
                                       tuple(rates))
        super().__init__(encoder, decoder, nn.Conv2d(aspp_channels, 1, 1), stride=16)


def _check_rates(rates: object) -> None:
    """Refuse rates other than distinct whole numbers of 1 or more: a rate of 0 or a repeated one
    builds a branch that sees nothing new, and YAML's ``true`` reads as 1."""
    if not isinstance(rates, list | tuple) or not rates or len(set(rates)) != len(rates) or \
            not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise SlidemapError("deeplabv3plus rates must be distinct whole numbers of 1 or more "
                            f"(ASPP dilations; 1 is the 1×1 branch), e.g. [1, 6, 12, 18], got "
                            f"{rates}")


@register("deeplabv3plus")
def build_deeplabv3plus(in_channels: int, width: int = 32,
                        rates: tuple[int, ...] = RATES) -> SegmentationModel:
    return DeepLabV3Plus(in_channels, width, rates)
