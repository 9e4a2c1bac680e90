"""DA-U-Net and its ablation: U-Net with a dilated (ASPP) bottleneck (D) and/or
attention-guided up-sampling (A).

``d_unet``, ``a_unet`` and ``da_unet`` are the U-Net of ``unet.py`` with only those parts changed,
so that the ablation compares like with like.

* D: the bottleneck stage's double conv is replaced by three parallel 3×3 atrous conv-BN-ReLU
  branches (dilations 1, 3, 6), concatenated and fused by a 1×1 conv: several receptive fields at
  the coarsest level, for about a fifth more parameters than the double conv it replaces (a
  tenth more in the whole network).
* A: before each skip is concatenated, the encoder feature A and the coarser decoder feature B
  decide together which skip pixels matter: α = σ(ψ(ReLU(W_a A + up(W_b B)))), and the skip
  becomes F = A + α·A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import SegmentationModel
from slidemap.models.blocks import ASPP
from slidemap.models.registry import register
from slidemap.models.unet import UNetDecoder, UNetEncoder, level_widths

DILATIONS = (1, 3, 6)


class AttentionGuidedFusion(nn.Module):
    """α at the skip's resolution from skip A and coarse B; returns (A + α·A, α)."""

    def __init__(self, skip_channels: int, coarse_channels: int, inter_channels: int):
        super().__init__()
        self.skip_proj = nn.Conv2d(skip_channels, inter_channels, 1)
        self.coarse_proj = nn.Conv2d(coarse_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def forward(self, skip: torch.Tensor,
                coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.skip_proj(skip)
        b = F.interpolate(self.coarse_proj(coarse), size=skip.shape[-2:], mode="bilinear",
                          align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(a + b)))
        return skip + alpha * skip, alpha


class AttentionUNetDecoder(UNetDecoder):
    """The U-Net decoder with each skip passed through an attention-guided fusion first."""

    def __init__(self, widths: list[int]):
        super().__init__(widths)
        self.gates = nn.ModuleList(
            AttentionGuidedFusion(fine, coarse, max(fine // 2, 1))
            for coarse, fine in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        level = len(features) - 2
        for stage, gate, skip in zip(self.stages, self.gates, features[-2::-1], strict=True):
            fused, alpha = gate(skip, x)
            self.attention_maps[f"alpha_level{level}"] = alpha.detach()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, fused], dim=1))
            level -= 1
        return x


class DilatedUNetEncoder(UNetEncoder):
    """The U-Net encoder whose bottleneck (the coarsest level) is ASPP instead of a double conv."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__(in_channels, widths)
        self.stages[-1] = nn.Sequential(nn.MaxPool2d(2), ASPP(widths[-2], widths[-1], DILATIONS))


class DAUNet(SegmentationModel):
    """``aspp``: the dilated bottleneck (D); ``attention``: attention-guided up-sampling (A)."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 4,
                 aspp: bool = True, attention: bool = True):
        if aspp and depth < 1:  # ASPP replaces the stage after the last down-sampling
            raise SlidemapError(f"d_unet and da_unet need depth 1 or more (down-samplings), "
                                f"e.g. 4: their ASPP replaces the stage after the last "
                                f"down-sampling; got {depth}")
        widths = level_widths(width, depth)
        encoder = (DilatedUNetEncoder if aspp else UNetEncoder)(in_channels, widths)
        decoder = (AttentionUNetDecoder if attention else UNetDecoder)(widths)
        super().__init__(encoder, decoder, nn.Conv2d(widths[0], 1, 1), stride=2**depth)


@register("d_unet")
def build_d_unet(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return DAUNet(in_channels, width, depth, aspp=True, attention=False)


@register("a_unet")
def build_a_unet(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return DAUNet(in_channels, width, depth, aspp=False, attention=True)


@register("da_unet")
def build_da_unet(in_channels: int, width: int = 32, depth: int = 4) -> SegmentationModel:
    return DAUNet(in_channels, width, depth, aspp=True, attention=True)
