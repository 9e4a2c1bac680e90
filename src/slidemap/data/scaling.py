"""Scale promotion: predict on up-sampled inputs, then bring probabilities back to the input grid.

Small landslides span few pixels at 10 m; the Landslide4Sense winners up-sampled patches (e.g.
128 → 256 or more) so the network sees them at a larger scale. :func:`promote` up-samples inputs
and labels for training and prediction, :func:`demote` averages probabilities back down.

All resampling uses pixel-area alignment (pixel centres at +0.5, like GDAL and
``align_corners=False``) so promoting and demoting are consistent, and works on the last two axes
of arrays of any leading shape.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import sparse

from slidemap.errors import SlidemapError

Kind = Literal["continuous", "mask"]


def promote(array: np.ndarray, factor: float, kind: Kind = "continuous") -> np.ndarray:
    """Up-sample the last two axes by ``factor``: bilinear for continuous data, nearest for masks.

    The output size is ``round(size * factor)``. Masks keep exactly their values (0/1/255) and
    dtype; continuous data is returned as float32 (float64 stays float64). NaN spreads to the
    output pixels that interpolate from it, so invalid areas stay invalid.
    """
    if not factor > 0:
        raise SlidemapError(f"scale factor {factor} is not positive: use e.g. 2 to double the size")
    height, width = array.shape[-2:]
    return resize(array, promoted_size(height, width, factor), kind)


def promoted_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The (H, W) that :func:`promote` gives a ``height`` × ``width`` array, so that a caller
    can check it before anything of that size is allocated."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def demote(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bring a probability map (..., h, w) back to ``size`` = (H, W).

    Shrinking averages the covered areas, so every output pixel is the mean probability over its
    footprint; growing (unusual) interpolates bilinearly.
    """
    h, w = prob.shape[-2:]
    rows = _area_weights(h, size[0]) if size[0] < h else _bilinear_weights(h, size[0])
    cols = _area_weights(w, size[1]) if size[1] < w else _bilinear_weights(w, size[1])
    return _apply(prob, rows, cols)


def resize(array: np.ndarray, size: tuple[int, int], kind: Kind = "continuous") -> np.ndarray:
    """Resample the last two axes to ``size`` = (H, W): bilinear, or nearest for ``kind='mask'``."""
    h, w = array.shape[-2:]
    if kind == "mask":
        return array[..., _nearest_index(h, size[0])[:, None], _nearest_index(w, size[1])]
    if kind != "continuous":
        raise ValueError(f"kind must be 'continuous' or 'mask', not {kind!r}")
    return _apply(array, _bilinear_weights(h, size[0]), _bilinear_weights(w, size[1]))


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Input index whose pixel contains each output pixel centre."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.minimum(np.floor(centres).astype(np.int64), n_in - 1)


def _bilinear_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) linear-interpolation matrix with edge values held beyond the outer centres."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    rows = np.arange(n_out)
    weights = sparse.csr_matrix((1 - frac, (rows, lo)), shape=(n_out, n_in))
    weights = weights + sparse.csr_matrix((frac, (rows, hi)), shape=(n_out, n_in))
    weights.eliminate_zeros()  # an explicit 0 weight would still spread NaN (0 * NaN)
    return weights


def _area_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) matrix averaging the input pixels under each output pixel, by overlap."""
    scale = n_in / n_out
    starts = np.arange(n_out) * scale
    ends = starts + scale
    first = np.floor(starts).astype(np.int64)
    span = int(np.ceil(scale)) + 1
    cols = first[:, None] + np.arange(span)
    overlap = np.minimum(ends[:, None], cols + 1) - np.maximum(starts[:, None], cols)
    keep = (overlap > 0) & (cols < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    return sparse.csr_matrix(
        (overlap[keep] / scale, (rows[keep], cols[keep])), shape=(n_out, n_in)
    )


def _apply(array: np.ndarray, rows: sparse.csr_matrix, cols: sparse.csr_matrix) -> np.ndarray:
    """``rows @ plane @ cols.T`` for every (h, w) plane of ``array``."""
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    rows, cols_t = rows.astype(dtype), cols.T.tocsr().astype(dtype)
    planes = array.reshape(-1, *array.shape[-2:]).astype(dtype, copy=False)
    out = np.empty((planes.shape[0], rows.shape[0], cols_t.shape[1]), dtype=dtype)
    for i, plane in enumerate(planes):
        out[i] = (rows @ plane) @ cols_t
    return out.reshape(*array.shape[:-2], *out.shape[-2:])
