"""Training-time colour jitter and random zoom on numpy samples.

A sample is a dict with ``image`` float32 (C, H, W) optical bands, optionally ``dem`` and
``slope`` float32 (1, H, W), and ``mask`` uint8 (H, W) with 255 = ignore. Functions return a new
dict and leave the input untouched; randomness comes only from the ``rng`` passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from slidemap.errors import SlidemapError

IGNORE = 255
# ITU-R BT.601 luma weights, as torchvision uses for grayscale / saturation.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """The (1, H, W) luma of three bands read as RGB."""
    return (rgb * _LUMA).sum(axis=0, keepdims=True)


def _factor(rng: np.random.Generator, strength: float) -> float:
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def rotate_hue(rgb: np.ndarray, turns: float) -> np.ndarray:
    """Rotate the colours of ``rgb`` (3, H, W) about the grey axis by ``turns`` of a full turn.

    A rotation about (1, 1, 1) keeps each pixel's band mean and its distance from grey (its
    saturation) and turns only its hue: a third of a turn sends R to G, G to B and B to R. It is
    linear, so it works in any radiometric unit; a NaN in one band makes the pixel NaN in all
    three (nodata is NaN in every band where training reads it).
    """
    angle = 2.0 * np.pi * turns
    cos, sin = np.cos(angle), np.sin(angle)
    axis = np.full(3, 1.0 / np.sqrt(3.0))
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                      [-axis[1], axis[0], 0.0]])
    matrix = cos * np.eye(3) + sin * cross + (1.0 - cos) * np.outer(axis, axis)
    return np.einsum("ij,jhw->ihw", matrix.astype(np.float32), rgb).astype(np.float32)


def colour_jitter(
    sample: dict[str, Any],
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    invert: float = 0.0,
    hue: float = 0.0,
    grayscale: float = 0.0,
    rgb: tuple[int, int, int] | None = (0, 1, 2),
) -> dict[str, Any]:
    """Random brightness, contrast, saturation and hue on the optical bands only; with probability
    ``invert`` a brightness inversion, with probability ``grayscale`` the colour taken out.

    Illumination and sensor differences change the optical bands, never the terrain, so ``dem``
    and ``slope`` are passed through as they are. Each strength s draws a factor in
    [1-s, 1+s] (0 switches it off). Brightness scales, contrast blends with the mean of the finite
    pixels, saturation blends the red, green and blue bands with their luma. ``rgb``: where
    those bands are among the image's (0-based; the first three by default; Landslide4Sense's
    B4, B3, B2 wherever they were picked), None where the image has none, which leaves out
    saturation, inversion, hue and grayscale, as an image of fewer bands does. Inversion
    mirrors each pixel's luma about the window's mean luma and shifts its three bands by the
    same amount, so that bright ground turns dark and dark turns bright
    while texture and colour differences between bands stay: landslides brighter than their
    surroundings in one scene can be darker in the next, and the model should not rely on
    either. Hue turns the three bands about the grey axis by up to ``hue`` of a full turn
    either way (0.5: any hue; torchvision's unit), and grayscale replaces each of them by their
    luma: sensors and composites differ in colour balance (a false-colour composite shows bare
    ground magenta), so colour alone should not tell a landslide. Values are not clipped, since
    band ranges differ between sensors; NaN nodata stays NaN.
    """
    image = np.asarray(sample["image"], dtype=np.float32)
    if image.ndim != 3:
        raise SlidemapError(f"colour_jitter needs image (C, H, W), got shape {image.shape}")
    out_image = image.copy()
    if brightness > 0:
        out_image *= _factor(rng, brightness)
    if contrast > 0:
        f = _factor(rng, contrast)
        finite = np.isfinite(out_image)
        mean = float(out_image[finite].mean()) if finite.any() else 0.0
        out_image = f * out_image + (1.0 - f) * mean
    colour = list(rgb) if rgb is not None and max(rgb) < out_image.shape[0] else None
    if saturation > 0 and colour:
        f = _factor(rng, saturation)
        bands = out_image[colour]
        out_image[colour] = f * bands + (1.0 - f) * _luma(bands)
    if invert > 0 and colour and rng.random() < invert:
        luma = _luma(out_image[colour])
        finite = np.isfinite(luma)
        mean = float(luma[finite].mean()) if finite.any() else 0.0
        out_image[colour] = out_image[colour] + 2.0 * (mean - luma)
    if hue > 0 and colour:
        out_image[colour] = rotate_hue(out_image[colour], float(rng.uniform(-hue, hue)))
    if grayscale > 0 and colour and rng.random() < grayscale:
        out_image[colour] = _luma(out_image[colour])
    out = dict(sample)
    out["image"] = out_image.astype(np.float32, copy=False)
    return out


def _zoom_float(array: np.ndarray, matrix: np.ndarray, offset: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """Bilinear zoom of a (C, H, W) float array onto (C, *size); NaN nodata stays NaN without
    spreading.

    NaN is zero-filled for the interpolation and put back where the nearest source pixel was NaN,
    so a NaN hole keeps its footprint instead of growing by a pixel each way.
    """
    nan = np.isnan(array)
    filled = np.where(nan, 0.0, array) if nan.any() else array
    out = np.empty((array.shape[0], *size), dtype=array.dtype)
    for c in range(array.shape[0]):
        out[c] = ndimage.affine_transform(
            filled[c], matrix, offset, output_shape=size, order=1, mode="constant", cval=0.0
        )
        if nan[c].any():
            moved = ndimage.affine_transform(
                nan[c].astype(np.uint8), matrix, offset, output_shape=size, order=0,
                mode="constant", cval=0
            )
            out[c][moved.astype(bool)] = np.nan
    return out


def random_scale(
    sample: dict[str, Any],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.75, 1.25),
) -> dict[str, Any]:
    """Zoom every spatial array by one random factor about the centre, keeping the tile size.

    A factor above 1 zooms in (crops the border), below 1 zooms out: the uncovered border is 0 in
    float arrays and ``IGNORE`` in ``mask``, so the loss never sees it. See ``zoom_about_centre``.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise SlidemapError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    h, w = sample["image"].shape[-2:]
    return zoom_about_centre(sample, float(rng.uniform(low, high)), (h, w))


def zoom_about_centre(sample: dict[str, Any], factor: float,
                      size: tuple[int, int]) -> dict[str, Any]:
    """Resample every spatial array by ``factor`` about its centre onto a ``size`` (H, W) grid.

    The input may be larger than ``size``: a zoom-out that reads a wider window of the scene
    fills the tile with real context instead of border. Output pixels that fall outside the input
    are 0 in float arrays and ``IGNORE`` in ``mask``. Float arrays (image, dem, slope, any other
    (…, H, W) float array) are bilinear, ``mask`` is nearest so it keeps its label values. Slope
    values are resampled, not rescaled: slope in degrees is a property of the real terrain, which
    zooming does not change, even though the apparent geometry of the tile does; the same holds
    for elevations in the DEM.
    """
    h, w = sample["image"].shape[-2:]
    # Output pixel o samples input pixel centre_in + (o - centre_out) / factor.
    centre_in = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    centre_out = np.array([(size[0] - 1) / 2.0, (size[1] - 1) / 2.0])
    matrix = np.full(2, 1.0 / factor)
    offset = centre_in - centre_out / factor

    out = dict(sample)
    for key, value in sample.items():
        if not isinstance(value, np.ndarray) or value.ndim < 2 or value.shape[-2:] != (h, w):
            continue
        flat = value.reshape(-1, h, w)
        shape = (*value.shape[:-2], *size)
        if key == "mask":
            zoomed = np.stack(
                [
                    ndimage.affine_transform(m, matrix, offset, output_shape=size, order=0,
                                             mode="constant", cval=IGNORE)
                    for m in flat
                ]
            )
            out[key] = zoomed.astype(value.dtype, copy=False).reshape(shape)
        elif np.issubdtype(value.dtype, np.floating):
            out[key] = _zoom_float(flat, matrix, offset, size).reshape(shape)
        else:
            raise SlidemapError(
                f"cannot zoom {key!r} ({value.dtype}): only float arrays and mask are resampled"
            )
    return out
