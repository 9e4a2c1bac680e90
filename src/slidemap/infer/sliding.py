"""Sliding-window prediction of an in-memory array with overlap blending."""

from __future__ import annotations

import numpy as np
from torch import nn

from slidemap.data.windows import grid_windows
from slidemap.infer.blend import window_weights
from slidemap.infer.runtime import predict_batch


def predict_array(model: nn.Module, x: np.ndarray, tile: int, overlap: int,
                  batch_size: int = 8, precision: str = "bf16") -> np.ndarray:
    """Probability map (H, W) of a normalised (C, H, W) array, tiles blended across overlaps."""
    _, h, w = x.shape
    prob_sum = np.zeros((h, w), dtype=np.float32)
    weight_sum = np.zeros((h, w), dtype=np.float32)
    windows = grid_windows(h, w, tile, overlap)
    weights = window_weights(min(tile, h), min(tile, w), overlap // 2)
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        patches = np.stack([x[:, win.row_off:win.row_off + win.height,
                              win.col_off:win.col_off + win.width] for win in batch])
        probs = predict_batch(model, patches, precision)
        for win, prob in zip(batch, probs, strict=True):
            rows = slice(win.row_off, win.row_off + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            prob_sum[rows, cols] += prob * weights
            weight_sum[rows, cols] += weights
    return prob_sum / weight_sum
