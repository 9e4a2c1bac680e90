"""Two-stream fusion network: optical bands and elevation bands get their own residual encoders.

Spectra and terrain have different statistics, so each stream learns its own features; they meet
in latent space (concatenate, 1×1 conv, residual block) at the bottleneck, and the skip at every
level is the sum of both streams. The two streams and their fusion are the model's encoder
(:class:`TwoStreamEncoder`), so freezing the encoder freezes both. The residual decoder applies
contextual (CBAM-like) attention after each stage; maps are kept as
``level{i}_contextual_{channel,spatial}``.
``instance_norm_levels`` > 0 gives the optical encoder's finest levels instance-batch norm
(IBN-a), meant to make it less sensitive to a new scene's brightness and contrast.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.attention import ContextualAttention, keep_maps
from slidemap.models.base import Encoder, SegmentationModel
from slidemap.models.blocks import ConvBNReLU, ResidualBlock
from slidemap.models.registry import register
from slidemap.models.resunet import ResidualDecoder, ResidualEncoder
from slidemap.models.unet import level_widths


class AttentiveResidualDecoder(ResidualDecoder):
    """The residual decoder with contextual attention after every stage."""

    def __init__(self, widths: list[int]):
        super().__init__(widths)
        self.attention = nn.ModuleList(ContextualAttention(fine) for fine in widths[-2::-1])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        level = len(features) - 2
        for stage, attention, skip in zip(self.stages, self.attention, features[-2::-1],
                                          strict=True):
            x, maps = attention(stage(self.merge(x, skip)))
            keep_maps(self.attention_maps, f"level{level}", maps)
            level -= 1
        return x


class TwoStreamEncoder(Encoder):
    """Residual encoders for the optical bands and the last ``elevation_channels`` bands; every
    level but the coarsest is the sum of both, the coarsest their fusion in latent space."""

    def __init__(self, in_channels: int, widths: list[int], elevation_channels: int,
                 instance_norm_levels: int = 0):
        super().__init__()
        self.channels = list(widths)
        self.elevation_channels = elevation_channels
        self.optical = ResidualEncoder(in_channels - elevation_channels, widths,
                                       instance_norm_levels)
        self.elevation = ResidualEncoder(elevation_channels, widths)
        self.fuse = nn.Sequential(ConvBNReLU(2 * widths[-1], widths[-1], kernel=1),
                                  ResidualBlock(widths[-1], widths[-1]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        k = self.elevation_channels
        optical = self.optical(x[:, :-k])
        elevation = self.elevation(x[:, -k:])
        features = [o + e for o, e in zip(optical[:-1], elevation[:-1], strict=True)]
        features.append(self.fuse(torch.cat([optical[-1], elevation[-1]], dim=1)))
        return features


class FusionNet(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, depth: int = 4,
                 elevation_channels: int | None = None, instance_norm_levels: int = 0):
        k = min(2, in_channels - 1) if elevation_channels is None else elevation_channels
        if not 1 <= k < in_channels:
            raise SlidemapError(
                f"fusion needs 1 ≤ elevation_channels < in_channels ({in_channels}), got {k}"
            )
        if not 0 <= instance_norm_levels <= depth + 1:
            raise SlidemapError(f"fusion: instance_norm_levels must be 0-{depth + 1}, "
                                f"got {instance_norm_levels}")
        widths = level_widths(width, depth)
        encoder = TwoStreamEncoder(in_channels, widths, k, instance_norm_levels)
        decoder = AttentiveResidualDecoder(widths)
        super().__init__(encoder, decoder, nn.Conv2d(widths[0], 1, 1), stride=2**depth)


@register("fusion")
def build_fusion(in_channels: int, width: int = 32, depth: int = 4,
                 elevation_channels: int | None = None,
                 instance_norm_levels: int = 0) -> SegmentationModel:
    return FusionNet(in_channels, width, depth, elevation_channels, instance_norm_levels)
