"""Prediction and scoring of in-memory arrays and of whole patch sets with a Predictor.

Patches are up-sampled by the model's scale (scale promotion), predicted in blended windows, and
their probabilities averaged back onto the patch's own grid, where they are written and scored.
One confusion matrix over all pixels of all patches gives the figures, as for scenes.
"""

from __future__ import annotations

import numpy as np

from slidemap.data.dataset import SceneArrays
from slidemap.data.scaling import demote
from slidemap.data.sources import PatchArrays
from slidemap.data.windows import grid_windows
from slidemap.infer.blend import window_weights
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions


def predict_arrays(predictor: Predictor, x: np.ndarray, valid: np.ndarray,
                   options: PredictOptions) -> np.ndarray:
    """Probabilities (H, W) of raw channels (C, H, W), in windows blended across overlaps."""
    options = options.resolve(predictor.defaults)
    _, h, w = x.shape
    prob_sum = np.zeros((h, w), dtype=np.float32)
    weight_sum = np.zeros((h, w), dtype=np.float32)
    windows = grid_windows(h, w, options.tile, options.overlap)
    weights = window_weights(min(options.tile, h), min(options.tile, w), options.overlap // 2)
    for start in range(0, len(windows), options.batch_size):
        batch = windows[start:start + options.batch_size]
        cuts = [(slice(win.row_off, win.row_off + win.height),
                 slice(win.col_off, win.col_off + win.width)) for win in batch]
        probs = predictor([x[:, rows, cols] for rows, cols in cuts],
                          [valid[rows, cols] for rows, cols in cuts])
        for (rows, cols), prob in zip(cuts, probs, strict=True):
            prob_sum[rows, cols] += prob * weights
            weight_sum[rows, cols] += weights
    return prob_sum / weight_sum


def native_prob(predictor: Predictor, arrays: SceneArrays, options: PredictOptions
                ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and validity on the arrays' own grid: a patch's native grid, a scene's
    working grid. Invalid pixels are NaN."""
    return to_native(predict_arrays(predictor, arrays.x, arrays.valid, options), arrays)


def to_native(prob: np.ndarray, arrays: SceneArrays) -> tuple[np.ndarray, np.ndarray]:
    """Bring probabilities on the arrays' model grid to their own grid (see :func:`native_prob`)."""
    valid = arrays.valid
    if isinstance(arrays, PatchArrays):
        valid = arrays.native_valid
        if prob.shape != valid.shape:
            prob = demote(prob, valid.shape)
    return np.where(valid, prob, np.nan).astype(np.float32), valid
