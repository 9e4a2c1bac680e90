"""FCN-8s (Long et al., 2015) on the ResNet-18-like encoder: a baseline of the DA-U-Net paper.

Scores from the stride-32 head are up-sampled and summed with scores read off the stride-16 and
stride-8 features, so coarse semantics get finer localisation. FCN has no decoder of features:
its decoder sums those per-level scores and its head is the identity; Grad-CAM therefore weighs
the encoder's last stage, as for the classifiers Grad-CAM was made for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.models.base import Decoder, SegmentationModel
from slidemap.models.blocks import ConvBNReLU
from slidemap.models.registry import register
from slidemap.models.resnet import ResNetEncoder


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FCN8sDecoder(Decoder):
    """Score the stride-32 features, then add the scores of the stride-16 and stride-8 skips."""

    def __init__(self, channels: list[int]):
        super().__init__()
        c8, c16, c32 = channels[-3:]
        self.score32 = nn.Sequential(ConvBNReLU(c32, c32), nn.Dropout2d(0.1), nn.Conv2d(c32, 1, 1))
        self.score16 = nn.Conv2d(c16, 1, 1)
        self.score8 = nn.Conv2d(c8, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f8, f16, f32 = features[-3:]
        score = self.score32(f32)
        score = _upsample_to(score, f16) + self.score16(f16)
        return _upsample_to(score, f8) + self.score8(f8)


class FCN(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32):
        encoder = ResNetEncoder(in_channels, width)
        decoder = FCN8sDecoder(encoder.channels)
        super().__init__(encoder, decoder, nn.Identity(), stride=32)
        self.last_stage = f"encoder.stages.{len(encoder.stages) - 1}"

    @property
    def target_layer(self) -> str:
        return self.last_stage


@register("fcn")
def build_fcn(in_channels: int, width: int = 32) -> SegmentationModel:
    return FCN(in_channels, width)
