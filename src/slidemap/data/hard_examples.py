"""Hard-example windows: draw training windows where the current model is most wrong.

Uniform windows spend most steps on easy background once a model has learned it. Given a per-pixel
error map of each scene (how far the model's probability is from the label), a window is drawn with
probability proportional to the total error inside it, among the windows that pass the same
``min_valid`` test as uniform windows.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window


def window_sums(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sum of ``values`` (H, W) in every ``height``×``width`` window, indexed by its top-left pixel.

    One integral image makes every window sum O(1); tiny negative round-off is clipped to 0.
    """
    integral = np.pad(values.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[height:, width:] - integral[:-height, width:] - integral[height:, :-width]
            + integral[:-height, :-width])
    return np.maximum(sums, 0.0)


def error_map(prob: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|p - label| per pixel (float32), 0 where the label is ignore (255) or ``prob`` is not finite.

    The soft error, not the thresholded one: a confident miss counts more than a hesitant one.
    """
    valid = (target != 255) & np.isfinite(prob)
    error = np.abs(np.nan_to_num(prob) - (target == 1))
    return np.where(valid, error, 0.0).astype(np.float32)


def hard_windows(valids: list[np.ndarray], errors: list[np.ndarray], size: int, count: int,
                 min_valid: float, rng: np.random.Generator) -> list[tuple[int, Window]]:
    """``count`` (scene index, window) pairs drawn with probability ∝ the error inside the window.

    Scenes compete by their error, so a scene the model already gets right gives fewer windows.
    Returns [] when no window passes ``min_valid`` or no error is left anywhere, so the caller can
    fall back to uniform windows.
    """
    if count <= 0:
        return []
    scene_of, rows_of, cols_of, weights = [], [], [], []
    shapes = []
    for index, (valid, error) in enumerate(zip(valids, errors, strict=True)):
        h, w = valid.shape
        sh, sw = min(size, h), min(size, w)
        enough = window_sums(valid, sh, sw) >= min_valid * sh * sw
        rows, cols = np.nonzero(enough)
        weights.append(window_sums(np.where(valid, error, 0.0), sh, sw)[rows, cols])
        scene_of.append(np.full(rows.size, index))
        rows_of.append(rows)
        cols_of.append(cols)
        shapes.append((sh, sw))
    weight = np.concatenate(weights)
    total = weight.sum()
    if weight.size == 0 or total <= 0:
        return []
    picks = rng.choice(weight.size, size=count, p=weight / total)
    scenes, rows, cols = (np.concatenate(a) for a in (scene_of, rows_of, cols_of))
    return [(int(scenes[p]), Window(int(cols[p]), int(rows[p]), shapes[scenes[p]][1],
                                    shapes[scenes[p]][0])) for p in picks]
