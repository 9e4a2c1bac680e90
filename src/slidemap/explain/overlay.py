"""Pictures of explanations: a heat map over an RGB preview (PNG) or georeferenced (GeoTIFF)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path

# lighter for higher, evenly, and read alike with any colour vision (as the report's
# probability preview); a rainbow (jet) drew false edges at its yellow band and its red and
# green were one to a colour-blind reader
HEAT_COLOURS = "magma"
BOX_COLOUR = "cyan"  # the region explained, apart from every colour of the heat scale


def rgb_preview(image: np.ndarray) -> np.ndarray:
    """An 8-bit ``(H, W, 3)`` view of raw ``(C, H, W)`` values for the eye.

    The first three bands are read as R, G, B (one or two bands: the first as grey), each
    stretched between its 2nd and 98th percentile so that a few bright or dark outliers do not
    wash the picture out. Missing (NaN) values come out black.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise SlidemapError(f"expected a (C, H, W) image, got shape {image.shape}")
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    out = np.zeros(bands.shape, dtype=np.float64)
    for i, band in enumerate(bands):
        valid = np.isfinite(band)
        if not valid.any():
            continue
        low, high = np.percentile(band[valid], [2, 98])
        if high > low:
            out[i] = np.clip((band - low) / (high - low), 0, 1)
        out[i][~valid] = 0
    return np.round(out.transpose(1, 2, 0) * 255).astype(np.uint8)


def picture_aspect(pixel_m: tuple[float, float], native: tuple[int, int],
                   shape: tuple[int, int]) -> float:
    """How much taller than wide to draw a pixel of a ``shape`` (rows, columns) picture of
    ``native`` (rows, columns) pixels of ``pixel_m`` ((x, y) ground size each), so that the
    picture keeps the ground's shape: pixels square in degrees are narrower on the ground
    than tall away from the equator (half as wide at 60° N), a 0.5 m × 1 m product's twice
    as tall as wide."""
    dx, dy = pixel_m
    return (dy * native[0] / shape[0]) / (dx * native[1] / shape[1])


def flipped_box(box: tuple[int, int, int, int], shape: tuple[int, int],
                flips: tuple[bool, bool]) -> tuple[int, int, int, int]:
    """``box`` (row0, col0, row1, col1, end-exclusive, of a (rows, columns) ``shape`` grid)
    where :func:`flipped` puts its pixels."""
    row0, col0, row1, col1 = box
    if flips[0]:
        row0, row1 = shape[0] - row1, shape[0] - row0
    if flips[1]:
        col0, col1 = shape[1] - col1, shape[1] - col0
    return row0, col0, row1, col1


@contextmanager
def _replace_atomically(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary name next to ``path`` and move it into place only once written, so a
    crash never leaves a half-written file under the real name. The project's writer gives the
    file the umask's permissions (a private 0600 temporary would stay unreadable to others) and
    a name that the next run into the folder sweeps if this process is killed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temp:
        yield temp


def save_overlay_png(
    rgb: np.ndarray,
    heat: np.ndarray,
    path: str | os.PathLike[str],
    title: str | None = None,
    alpha: float = 0.5,
    box: tuple[int, int, int, int] | None = None,
    aspect: float = 1.0,
) -> None:
    """Draw ``heat`` ((H, W) in [0, 1]) over ``rgb`` ((H, W, 3), uint8 or float in [0, 1]),
    with ``box`` (row0, col0, row1, col1 of the picture, end-exclusive) outlined: where the
    region explained lies, which on a grid stored south up is not where its numbers read.
    ``aspect``: a pixel's drawn height over its width (:func:`picture_aspect`)."""
    rgb = np.asarray(rgb)
    heat = np.asarray(heat, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or heat.shape != rgb.shape[:2]:
        raise SlidemapError(
            f"overlay needs rgb (H, W, 3) and heat (H, W) of one size, got {rgb.shape} and "
            f"{heat.shape}"
        )
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb.astype(np.float32), 0, 1)
    height, width = heat.shape
    scale = 6 / max(height * aspect, width)
    figure = Figure(figsize=(width * scale + 1.5, height * aspect * scale + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(rgb, interpolation="nearest", aspect=aspect)
    shown = axes.imshow(heat, cmap=HEAT_COLOURS, vmin=0, vmax=1, alpha=alpha,
                        interpolation="nearest", aspect=aspect)
    if box is not None:
        row0, col0, row1, col1 = box
        axes.add_patch(Rectangle((col0 - 0.5, row0 - 0.5), col1 - col0, row1 - row0,
                                 fill=False, edgecolor=BOX_COLOUR, linewidth=1.5, clip_on=False))
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    with _replace_atomically(path) as temp:
        figure.savefig(temp, format="png", bbox_inches="tight")


def save_heat_geotiff(heat: np.ndarray, path: str | os.PathLike[str],
                      profile: dict[str, Any]) -> None:
    """Write ``heat`` as a one-band float32 GeoTIFF on the grid (crs, transform) of ``profile``.

    Only the georeferencing is taken from ``profile``: its band count, dtype, nodata or colour
    interpretation belong to the source image and would misdescribe a heat map.
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise SlidemapError(f"expected a (H, W) heat map, got shape {heat.shape}")
    height, width = heat.shape
    if (profile.get("height", height), profile.get("width", width)) != (height, width):
        raise SlidemapError(
            f"heat map is {height}×{width} but the profile describes "
            f"{profile['height']}×{profile['width']} pixels: pass the window's profile"
        )
    out_profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": "float32",
        "nodata": float("nan"),
        "crs": profile.get("crs"),
        "transform": profile.get("transform"),
        "compress": "deflate",
    }
    with _replace_atomically(path) as temp, rasterio.open(temp, "w", **out_profile) as dst:
        dst.write(heat, 1)
