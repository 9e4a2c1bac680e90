"""Blending weights that hide tile seams: high in a window's centre, tapering at its borders."""

from __future__ import annotations

import numpy as np


def taper(length: int, margin: int) -> np.ndarray:
    """1-D weights: a raised-cosine ramp over ``margin`` px at both ends, 1 in between, never 0."""
    weights = np.ones(length, dtype=np.float32)
    margin = min(margin, length // 2)
    if margin > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(margin) + 0.5) / margin)
        weights[:margin] = ramp
        weights[length - margin:] = ramp[::-1]
    return np.maximum(weights, 1e-3)


def window_weights(height: int, width: int, margin: int) -> np.ndarray:
    """(H, W) separable blending weights for one window."""
    return np.outer(taper(height, margin), taper(width, margin))
