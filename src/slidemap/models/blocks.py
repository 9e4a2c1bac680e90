"""Building blocks shared by several architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3×3 (or k×k) convolution, batch norm, ReLU: the unit every encoder here is made of."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: int = 1, stride: int = 1):
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                      bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The classic U-Net stage: two 3×3 conv-BN-ReLU units."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class InstanceBatchNorm(nn.Module):
    """Instance norm on the first half of the channels, batch norm on the rest (IBN-Net, Pan et
    al., 2018).

    Instance norm takes each window's own contrast and brightness out of the features it
    normalises, the appearance that changes from one scene to the next; batch norm keeps the rest
    of the channels' absolute content, which tells ground types apart.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.instance_channels = channels // 2
        self.instance = nn.InstanceNorm2d(self.instance_channels, affine=True)
        self.batch = nn.BatchNorm2d(channels - self.instance_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.instance_channels
        first, rest = torch.split(x, [split, x.shape[1] - split], dim=1)
        return torch.cat([self.instance(first), self.batch(rest)], dim=1)


class ResidualBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projected) shortcut, as in ResNet / ResUNet.

    ``dilation`` > 1 widens the receptive field without down-sampling (dilated ResNets of
    DeepLab / PSPNet); the default is the plain block. ``instance_norm`` normalises the first
    conv's output with :class:`InstanceBatchNorm` (IBN-a) instead of batch norm alone.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1,
                 instance_norm: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                      bias=False),
            InstanceBatchNorm(cout) if instance_norm else nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # Down-sampling shortcuts average-pool before the 1×1 projection (ResNet-D): it keeps
            # every input pixel in play, and torch 2.13's CPU kernel for a strided 1×1 conv in
            # channels_last corrupts memory in backward when it has fewer than 16 input channels.
            pool: nn.Module = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride != 1 \
                else nn.Identity()
            self.shortcut = nn.Sequential(
                pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BinAverage(nn.Module):
    """Adaptive average pooling to ``bins``×``bins`` as two matrix products.

    The bins are torch's (bin i spans floor(i·n/b) to ceil((i+1)·n/b)), but the weights are built
    from the input's size inside the graph, so an ONNX export pools any input size alike; torch
    exports adaptive pooling only when the bins divide the traced size.
    """

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._weights(x.shape[-2], x)
        cols = self._weights(x.shape[-1], x)
        return rows @ x @ cols.transpose(0, 1)

    def _weights(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """(bins, size): row i averages the pixels of bin i."""
        index = torch.arange(size, device=like.device, dtype=torch.float32)
        edges = torch.arange(self.bins + 1, device=like.device, dtype=torch.float32) * size
        start = torch.floor(edges[:-1] / self.bins)
        end = torch.ceil(edges[1:] / self.bins)
        inside = ((index[None] >= start[:, None]) & (index[None] < end[:, None])).float()
        return (inside / inside.sum(dim=1, keepdim=True)).to(like.dtype)


class PooledBranch(nn.Module):
    """Average-pool to ``bins``×``bins``, 1×1 conv + ReLU, up-sample back: global context.

    The pyramid pooling of PSPNet and the image pooling of ASPP. No batch norm: a 1×1 bin with a
    batch of one would leave it a single value per channel to normalise.
    """

    def __init__(self, cin: int, cout: int, bins: int = 1):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if bins == 1 else BinAverage(bins)
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(self.pool(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel dilated convs (and optionally image pooling),
    concatenated and fused by a 1×1 conv-BN-ReLU, to see context at several scales at once.

    Every branch is a 3×3 conv-BN-ReLU, except that ``pointwise_rate_one`` makes the rate-1 branch
    a 1×1 conv as in DeepLab.
    """

    def __init__(self, cin: int, cout: int, dilations: tuple[int, ...],
                 image_pooling: bool = False, pointwise_rate_one: bool = False):
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            ConvBNReLU(cin, cout, kernel=1 if d == 1 and pointwise_rate_one else 3, dilation=d)
            for d in self.dilations
        )
        if image_pooling:
            self.branches.append(PooledBranch(cin, cout))
        self.fuse = ConvBNReLU(len(self.branches) * cout, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple of ``multiple``; returns the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)

