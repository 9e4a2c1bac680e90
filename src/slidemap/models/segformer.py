"""A small SegFormer (Xie et al., 2021), trained from scratch.

Hierarchical transformer encoder (four stages at strides 4, 8, 16, 32; overlapping patch
embeddings; self-attention whose keys and values are spatially reduced; Mix-FFN whose depthwise
3×3 conv replaces positional encodings, so any input size works) and an all-MLP decoder.
At width 32 the dims (32, 64, 160, 256) and heads (1, 2, 5, 8) are those of MiT-B0.
The attention each key position receives (mean over heads and queries) in the last block of each
stage, relative to the most attended position's, is kept as ``stage{i}_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import Decoder, Encoder, SegmentationModel
from slidemap.models.blocks import ConvBNReLU
from slidemap.models.registry import register

DIM_MULTIPLIERS = (1, 2, 5, 8)
REDUCTIONS = (8, 4, 2, 1)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with a kernel larger than its stride, so neighbouring patches overlap."""

    def __init__(self, cin: int, dim: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention with keys/values from a ``reduction``× strided conv: N·N/R² cost."""

    def __init__(self, dim: int, heads: int, reduction: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduce: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        if reduction > 1:
            self.reduce = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int,
                w: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        grid = self.reduce(x.transpose(1, 2).reshape(b, c, h, w))
        kv_h, kv_w = grid.shape[-2:]
        kv = self.kv(self.norm(grid.flatten(2).transpose(1, 2)))
        k, v = kv.reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(b, n, c)
        received = attention.mean(dim=(1, 2)).reshape(b, 1, kv_h, kv_w)
        return self.proj(out), received


def relative_attention(received: torch.Tensor) -> torch.Tensor:
    """The attention each key position receives over that of the most attended one, in (0, 1].

    Received attention sums to 1 over the key positions, so its values are about 1/N (0.016 for
    the 64 positions of a 256 px window): on the [0, 1] scale of the attention pictures that was
    one uniform dark colour whatever the pattern. Relative to its peak the map keeps its
    contrast and a level that reads: 1 where attention peaks, 0.5 where a position draws half.
    """
    peak = received.amax(dim=(-2, -1), keepdim=True)
    return received / peak.clamp_min(torch.finfo(received.dtype).tiny)


class MixFFN(nn.Module):
    """Linear → depthwise 3×3 conv → GELU → linear: the conv leaks position information."""

    def __init__(self, dim: int, expansion: int = 4):
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        grid = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = self.dwconv(grid).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, reduction: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = EfficientSelfAttention(dim, heads, reduction)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        attended, received = self.attention(self.norm1(x), h, w)
        x = x + attended
        return x + self.ffn(self.norm2(x), h, w), received


class MixTransformerStage(nn.Module):
    """Patch embedding, transformer blocks, layer norm; returns (B, C, h, w) and the last
    block's attention map."""

    def __init__(self, cin: int, dim: int, depth: int, heads: int, reduction: int, first: bool):
        super().__init__()
        self.embed = OverlapPatchEmbed(cin, dim, 7 if first else 3, 4 if first else 2)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, reduction) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, h, w = self.embed(x)
        received = torch.empty(0)
        for block in self.blocks:
            x, received = block(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w), received


def _heads(dim: int) -> int:
    """About 32 channels per head (MiT), and a divisor of ``dim``."""
    heads = max(dim // 32, 1)
    while dim % heads:
        heads -= 1
    return heads


class AllMLPDecoder(Decoder):
    """Project every stage to ``dim`` (a per-pixel linear layer), up-sample to stride 4, fuse."""

    def __init__(self, dims: list[int], dim: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(d, dim, 1) for d in dims)
        self.fuse = ConvBNReLU(len(dims) * dim, dim, kernel=1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = [
            F.interpolate(project(f), size=size, mode="bilinear", align_corners=False)
            for project, f in zip(self.project, features, strict=True)
        ]
        return self.dropout(self.fuse(torch.cat(projected[::-1], dim=1)))


class MixTransformerEncoder(Encoder):
    """Four transformer stages at strides 4, 8, 16, 32; keeps each stage's attention map."""

    def __init__(self, in_channels: int, dims: list[int], depths: tuple[int, ...]):
        super().__init__()
        self.channels = list(dims)
        self.stages = nn.ModuleList(
            MixTransformerStage(cin, dim, depth, _heads(dim), reduction, first=i == 0)
            for i, (cin, dim, depth, reduction) in enumerate(
                zip([in_channels, *dims[:-1]], dims, depths, REDUCTIONS, strict=True)
            )
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x, received = stage(x)
            self.attention_maps[f"stage{i}_attention"] = relative_attention(received.detach())
            features.append(x)
        return features


def _check_depths(depths: object) -> None:
    """Refuse stage depths other than one count of 1 or more per stage: a stage of no block has
    no attention map (an IndexError in the first forward), and another count of stages failed
    on a zip that named no option."""
    if not isinstance(depths, list | tuple) or len(depths) != len(DIM_MULTIPLIERS) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
        raise SlidemapError(f"segformer depths must be {len(DIM_MULTIPLIERS)} whole numbers of 1 "
                            f"or more (blocks per stage), e.g. [2, 2, 2, 2], got {depths}")


class SegFormer(SegmentationModel):
    def __init__(self, in_channels: int, width: int = 32, depths: tuple[int, ...] = (2, 2, 2, 2)):
        _check_depths(depths)
        dims = [width * m for m in DIM_MULTIPLIERS]
        encoder = MixTransformerEncoder(in_channels, dims, depths)
        decoder = AllMLPDecoder(dims, dims[-1])
        super().__init__(encoder, decoder, nn.Conv2d(dims[-1], 1, 1), stride=32)


@register("segformer")
def build_segformer(in_channels: int, width: int = 32,
                    depths: tuple[int, ...] = (2, 2, 2, 2)) -> SegmentationModel:
    return SegFormer(in_channels, width, depths)
