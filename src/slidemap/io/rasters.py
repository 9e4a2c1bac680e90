"""Georeferenced raster outputs written strip by strip, moved into place only when complete."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.windows import Window

from slidemap.io.atomic import atomic_path

MASK_NODATA = 255


def geotiff_profile(profile: dict, dtype: str, nodata: float | int) -> dict:
    """A tiled, compressed single-band GeoTIFF profile on ``profile``'s grid."""
    return {
        "driver": "GTiff", "dtype": dtype, "count": 1, "nodata": nodata,
        "crs": profile["crs"], "transform": profile["transform"],
        "width": profile["width"], "height": profile["height"],
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }


class RasterOutputs:
    """The probability (float32, NaN nodata) and mask (uint8, 255 nodata) GeoTIFFs of a scene."""

    def __init__(self, profile: dict, prob_path: Path, mask_path: Path) -> None:
        self.profile = profile
        self.paths = (prob_path, mask_path)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RasterOutputs:
        try:
            prob_tmp = self._stack.enter_context(atomic_path(self.paths[0]))
            mask_tmp = self._stack.enter_context(atomic_path(self.paths[1]))
            self.prob = self._stack.enter_context(rasterio.open(
                prob_tmp, "w", **geotiff_profile(self.profile, "float32", float("nan"))))
            self.mask = self._stack.enter_context(rasterio.open(
                mask_tmp, "w", **geotiff_profile(self.profile, "uint8", MASK_NODATA)))
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def write(self, window: Window, prob: np.ndarray, valid: np.ndarray, threshold: float) -> None:
        mask = np.where(valid, (prob >= threshold).astype(np.uint8), MASK_NODATA)
        self.prob.write(np.where(valid, prob, np.nan).astype(np.float32), 1, window=window)
        self.mask.write(mask.astype(np.uint8), 1, window=window)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Datasets close before the atomic moves (ExitStack unwinds in reverse order); an
        # exception unwinds the same way and the temporary files are removed.
        self._stack.__exit__(exc_type, exc, tb)
