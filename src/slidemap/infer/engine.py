"""The one window engine: how windows are cut, batched, run and blended, whoever asks.

Every prediction over windows goes through here: scenes (``slidemap.infer.stream`` cuts them in
native pixels, reads each window at the model's working resolution and streams the blended
strips to the GeoTIFF writer), patch sets (``slidemap.infer.patches`` writes each patch), and
in-memory arrays (training validation, ``finetune``, self-training, the hard-example maps of
training). They share the windows' grid (``slidemap.data.windows.grid_offsets``), the batching
(:func:`run_batches`), the runner (a ``Predictor``: backend, precision, ensemble, scales, TTA)
and the blending weights (:func:`blend_weights`), so one model gives the same probabilities on a
scene and on the same pixels handed over as an array.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from torch import nn

from slidemap.data.windows import grid_windows
from slidemap.infer.runtime import predict_batch

# Probabilities (h, w) of raw windows (C, h, w) and their validity (h, w): a ``Predictor``.
Runner = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def taper(length: int, margin: int) -> np.ndarray:
    """1-D weights: a raised-cosine ramp over ``margin`` px at both ends, 1 in between, never 0."""
    weights = np.ones(length, dtype=np.float32)
    margin = min(margin, length // 2)
    if margin > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(margin) + 0.5) / margin)
        weights[:margin] = ramp
        weights[length - margin:] = ramp[::-1]
    return np.maximum(weights, 1e-3)


@functools.lru_cache(maxsize=16)
def blend_weights(height: int, width: int, margin: int) -> np.ndarray:
    """(H, W) separable weights that hide seams: high in a window's centre, tapering over
    ``margin`` px at its borders (half the overlap). Shared and read-only."""
    weights = np.outer(taper(height, margin), taper(width, margin))
    weights.flags.writeable = False
    return weights


def run_batches(runner: Runner, raw: list[np.ndarray], valid: list[np.ndarray],
                batch_size: int) -> list[np.ndarray]:
    """``runner`` on the windows ``batch_size`` at a time (each window is computed on its own,
    so the batch size changes the speed and the memory; the figures only to float rounding,
    ~3e-7, as the kernels sum a batch in another order)."""
    probs: list[np.ndarray] = []
    for start in range(0, len(raw), batch_size):
        part = slice(start, start + batch_size)
        probs += runner(raw[part], valid[part])
    return probs


class ArraySink:
    """Blended probabilities of a whole array, in memory: the sum of probability × weight and
    the sum of weights, added to in place, window after window."""

    def __init__(self, height: int, width: int) -> None:
        self.prob = np.zeros((height, width), dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)

    def add(self, rows: slice, cols: slice, prob: np.ndarray, weights: np.ndarray) -> None:
        target = self.prob[rows, cols]
        target += prob * weights
        self.weight[rows, cols] += weights

    def result(self) -> np.ndarray:
        np.divide(self.prob, self.weight, out=self.prob)
        return np.clip(self.prob, 0.0, 1.0, out=self.prob)  # rounding: 1 + 1e-7 is not a p


def predict_array(runner: Runner, x: np.ndarray, valid: np.ndarray, tile: int, overlap: int,
                  batch_size: int) -> np.ndarray:
    """Probabilities (H, W) of channels (C, H, W) on their own grid, in windows of ``tile`` px
    overlapping by ``overlap``, blended."""
    _, h, w = x.shape
    windows = grid_windows(h, w, tile, overlap)
    sink = ArraySink(h, w)
    cuts = [(slice(win.row_off, win.row_off + win.height),
             slice(win.col_off, win.col_off + win.width)) for win in windows]
    for start in range(0, len(cuts), batch_size):
        batch = cuts[start:start + batch_size]
        probs = runner([x[:, rows, cols] for rows, cols in batch],
                       [valid[rows, cols] for rows, cols in batch])
        for (rows, cols), prob in zip(batch, probs, strict=True):
            sink.add(rows, cols, prob, blend_weights(rows.stop - rows.start,
                                                     cols.stop - cols.start, overlap // 2))
    return sink.result()


def network_runner(model: nn.Module, precision: str) -> Runner:
    """A runner of a bare network on windows already normalised (a model being trained: it
    keeps its memory layout, only its mode is set by the caller)."""
    def run(raw: list[np.ndarray], valid: list[np.ndarray]) -> list[np.ndarray]:
        return list(predict_batch(model, np.stack(raw), precision))
    return run
