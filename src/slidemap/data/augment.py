"""Geometric augmentation: the 8 flips/rotations of the square, applied to every array alike."""

from __future__ import annotations

import numpy as np


def flip_rot90(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Apply one random element of the dihedral group to all (..., H, W) arrays of a sample.

    Slope and elevation are invariant under these moves, so DEM channels can go along unchanged.
    """
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    out = {}
    for key, value in arrays.items():
        moved = np.rot90(value, k, axes=(-2, -1))
        if flip:
            moved = moved[..., ::-1]
        out[key] = np.ascontiguousarray(moved)
    return out
