"""Windows over a scene: a regular overlapping grid for prediction, random ones for training."""

from __future__ import annotations

import numpy as np
from affine import Affine
from rasterio.windows import Window


def grid_offsets(length: int, size: int, stride: int, from_end: bool = False) -> list[int]:
    """Offsets of windows of ``size`` every ``stride`` covering [0, length); the last one flush.
    ``from_end``: laid from the far end (the first flush), in increasing order: the same
    windows on the ground as a grid stored the other way round lays from its start."""
    if length <= size:
        return [0]
    offsets = list(range(0, length - size, stride))
    offsets.append(length - size)
    return sorted(length - size - o for o in offsets) if from_end else offsets


def north_up_flips(transform: Affine) -> tuple[bool, bool]:
    """Whether a grid's rows and columns must be reversed to face north up, west left: row 0
    of a south-up grid is its south edge, column 0 of a grid stored east to west its east
    edge. GDAL's identity geotransform (an image without georeference, as a plain PNG) is taken
    as it is stored. A rotated grid (b, d ≠ 0) is only flipped by the signs of a and e, not
    turned."""
    if transform.is_identity:
        return False, False
    return transform.e > 0, transform.a < 0


def flipped(array: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """``array`` (rows and columns last) with its rows and/or columns reversed (a view)."""
    if flips[0]:
        array = array[..., ::-1, :]
    if flips[1]:
        array = array[..., ::-1]
    return array


def grid_windows(height: int, width: int, size: int, overlap: int = 0) -> list[Window]:
    """Row-major grid of ``size`` px windows overlapping by ``overlap`` px, clipped to the scene."""
    stride = max(1, size - overlap)
    return [
        Window(col, row, min(size, width), min(size, height))
        for row in grid_offsets(height, size, stride)
        for col in grid_offsets(width, size, stride)
    ]


def random_windows(valid: np.ndarray, size: int, count: int, min_valid: float,
                   rng: np.random.Generator) -> list[Window]:
    """Draw ``count`` windows of ``size`` px whose fraction of valid pixels is ≥ ``min_valid``.

    Positions are drawn uniformly among all that pass (an integral image makes the check cheap), so
    training covers the whole valid area of scenes that are mostly nodata. Returns [] if none pass.
    """
    rows, cols = _passing_corners(valid, size, min_valid)
    if rows.size == 0:
        return []
    sh, sw = min(size, valid.shape[0]), min(size, valid.shape[1])
    picks = rng.integers(0, rows.size, size=count)
    return [Window(int(cols[p]), int(rows[p]), sw, sh) for p in picks]


def has_window(valid: np.ndarray, size: int, min_valid: float) -> bool:
    """Whether :func:`random_windows` can draw any window from ``valid`` (without drawing)."""
    return bool(_passing_corners(valid, size, min_valid)[0].size)


def _passing_corners(valid: np.ndarray, size: int,
                     min_valid: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the top-left corners of the ``size`` px windows (clipped to the grid)
    whose fraction of valid pixels is ≥ ``min_valid``."""
    h, w = valid.shape
    sh, sw = min(size, h), min(size, w)
    integral = np.pad(valid.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[sh:, sw:] - integral[:-sh, sw:] - integral[sh:, :-sw]
            + integral[:-sh, :-sw])
    rows, cols = np.nonzero(sums >= min_valid * sh * sw)
    return rows, cols


def windows_around(pixels: np.ndarray, valid: np.ndarray, size: int, count: int,
                   min_valid: float, rng: np.random.Generator, tries: int = 8) -> list[Window]:
    """Up to ``count`` windows of ``size`` px, each around one of ``pixels`` (flat indices into
    ``valid``'s grid) drawn uniformly, at a uniform place in the window, clipped to the grid.

    A window is so drawn about in proportion to how many of ``pixels`` it holds, without the
    window sums of every position (a scene's landslide pixels are fixed; its windows are many).
    Windows with less than ``min_valid`` of valid pixels are drawn again, ``tries`` times at most;
    fewer than ``count`` come back when too few pass, and [] when ``pixels`` is empty.
    """
    h, w = valid.shape
    sh, sw = min(size, h), min(size, w)
    picks: list[Window] = []
    for _ in range(tries):
        need = count - len(picks)
        if need <= 0 or pixels.size == 0:
            break
        rows, cols = np.divmod(pixels[rng.integers(0, pixels.size, size=need)], w)
        tops = np.clip(rows - rng.integers(0, sh, size=need), 0, h - sh)
        lefts = np.clip(cols - rng.integers(0, sw, size=need), 0, w - sw)
        for top, left in zip(tops.tolist(), lefts.tolist(), strict=True):
            if valid[top:top + sh, left:left + sw].mean() >= min_valid:
                picks.append(Window(left, top, sw, sh))
    return picks


def context_window(window: Window, side: int, height: int, width: int) -> Window:
    """A ``side`` px window centred on ``window``, shifted to lie inside the scene and clipped
    to it: the wider (or narrower) ground a zoomed training window is resampled from."""
    def span(offset: int, length: int, extent: int) -> tuple[int, int]:
        size = min(side, extent)
        start = offset + length // 2 - size // 2
        return min(max(start, 0), extent - size), size

    col, w = span(window.col_off, window.width, width)
    row, h = span(window.row_off, window.height, height)
    return Window(col, row, w, h)
