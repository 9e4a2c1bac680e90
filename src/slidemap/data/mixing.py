"""Mixup (Zhang et al. 2018) for segmentation batches: blend pairs of tiles and their masks.

Mixing happens on the collated batch (tensors), after the per-sample numpy augmentations, so that
each tile is paired with another tile of the same batch. Masks become soft, which the losses
accept; a pixel stays valid only where both partners are valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from slidemap.errors import SlidemapError


def mixup(
    batch: dict[str, Tensor],
    alpha: float = 0.4,
    generator: np.random.Generator | None = None,
    lam: float | Sequence[float] | np.ndarray | Tensor | None = None,
    index: Sequence[int] | np.ndarray | Tensor | None = None,
) -> dict[str, Tensor]:
    """Mix each sample with a partner: ``λ·a + (1-λ)·b`` for ``x`` and ``target``.

    ``batch`` holds ``x`` (B, C, H, W), ``target`` (B, 1, H, W) float and ``valid`` (B, 1, H, W)
    bool. Partners are a random permutation of the batch and λ ~ Beta(alpha, alpha) per sample,
    both drawn from ``generator`` (numpy, so data-pipeline seeds cover it). ``lam`` (a number or
    one per sample) and ``index`` (partner of each sample) fix those draws instead. Other keys
    are copied unchanged and so describe the first partner. The input batch is not modified.
    """
    for key in ("x", "target", "valid"):
        if key not in batch:
            raise SlidemapError(f"mixup needs batch key {key!r}; got {', '.join(sorted(batch))}")
    x, target, valid = batch["x"], batch["target"], batch["valid"]
    n = x.shape[0]
    if lam is None or index is None:
        if generator is None:
            raise SlidemapError("mixup needs a numpy generator unless both lam and index are "
                                "given")
        if index is None:
            index = generator.permutation(n)
        if lam is None:
            if alpha <= 0:
                raise SlidemapError(f"mixup alpha must be > 0, got {alpha}")
            lam = generator.beta(alpha, alpha, size=n)

    idx = torch.as_tensor(index, dtype=torch.long, device=x.device)
    if idx.shape != (n,):
        raise SlidemapError(f"mixup index must hold one partner per sample ({n}), got {idx.shape}")
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=x.device).expand(n).reshape(n, 1, 1, 1)

    out = dict(batch)
    lam_x = lam_t.to(x.dtype)
    out["x"] = lam_x * x + (1.0 - lam_x) * x[idx]
    t = target.float()
    out["target"] = lam_t * t + (1.0 - lam_t) * t[idx]
    out["valid"] = valid.bool() & valid.bool()[idx]
    return out
