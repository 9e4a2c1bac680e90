"""A ResNet-18-like encoder scaled by ``width``, the backbone of the FCN / PSPNet / DeepLabV3+
baselines. It is trained from scratch: no pretrained weights exist for arbitrary band counts."""

from __future__ import annotations

import torch
from torch import nn

from slidemap.models.base import Encoder
from slidemap.models.blocks import ConvBNReLU, ResidualBlock


class ResNetEncoder(Encoder):
    """7×7 stride-2 stem, max pool, four stages of ``blocks`` residual blocks (widths w, 2w, 4w,
    8w). Returns the stem and the four stages' features, at strides 2, 4, 8, 16, 32.

    ``output_stride`` 16 or 8 replaces the strides of the last stages by dilation (as DeepLab and
    PSPNet do) so the coarsest features keep more spatial detail.
    """

    def __init__(self, in_channels: int, width: int = 32, output_stride: int = 32,
                 blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        self.channels = [width] + [width * 2**i for i in range(len(blocks))]
        self.stem = ConvBNReLU(in_channels, width, kernel=7, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stages = nn.ModuleList()
        current, dilation = 4, 1
        for i, count in enumerate(blocks):
            stride = 1 if i == 0 else 2
            if current * stride > output_stride:
                dilation, stride = dilation * stride, 1
            current *= stride
            cin, cout = self.channels[i], self.channels[i + 1]
            layers = [ResidualBlock(cin, cout, stride=stride, dilation=dilation)]
            layers += [ResidualBlock(cout, cout, dilation=dilation) for _ in range(count - 1)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = [x]
        x = self.pool(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
