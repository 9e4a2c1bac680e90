"""The attention maps a model applied to one image, resampled onto the image for display."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from slidemap.explain.gradcam import eval_mode, prepare_input, upsample_crop


@dataclass(frozen=True)
class AttentionMaps:
    """Spatial maps as ``(H, W)`` float32 in [0, 1]; channel attention as ``(C,)`` weights.

    Channel attention (``(B, C, 1, 1)``) says which features matter, not where, so it has no
    place on an image and is kept apart.
    """

    spatial: dict[str, np.ndarray] = field(default_factory=dict)
    channel: dict[str, np.ndarray] = field(default_factory=dict)


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """Keep maps already in [0, 1] (sigmoid gates, whose absolute level means something) as they
    are; rescale any other map min–max so that it can share a colour scale."""
    low, high = values.min(), values.max()
    if low >= 0 and high <= 1:
        return values
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def collect_attention(model: nn.Module, image: torch.Tensor | np.ndarray) -> AttentionMaps:
    """Run one ``(C, H, W)`` image through ``model`` and collect its ``attention_maps``.

    Spatial maps are averaged over channels (if they have several), upsampled bilinearly from
    the padded grid the model saw and cropped to ``(H, W)``. A model without attention gives
    empty dicts.
    """
    batch, size = prepare_input(model, image)
    with eval_mode(model), torch.no_grad():
        model(batch)
    maps: dict[str, torch.Tensor] = getattr(model, "attention_maps", None) or {}
    result = AttentionMaps()
    for name, value in maps.items():
        first = value[:1].detach().float()
        if first.shape[-2:] == (1, 1):
            result.channel[name] = first.flatten().cpu().numpy()
            continue
        spatial = upsample_crop(first.mean(dim=1, keepdim=True), (batch.shape[-2], batch.shape[-1]),
                                size)
        result.spatial[name] = _unit_range(spatial[0, 0]).cpu().numpy().astype(np.float32)
    return result


def collect_attention_maps(
    model: nn.Module, image: torch.Tensor | np.ndarray
) -> dict[str, np.ndarray]:
    """The spatial attention maps only, ``name -> (H, W)`` in [0, 1], for overlays."""
    return collect_attention(model, image).spatial
