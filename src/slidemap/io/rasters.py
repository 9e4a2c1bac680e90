"""Georeferenced raster outputs written strip by strip, moved into place only when complete."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path, final_path

MASK_NODATA = 255
BLOCK_SIDE = 256  # of the output GeoTIFFs' tiles


def geotiff_profile(profile: dict, dtype: str, nodata: float | int) -> dict:
    """A tiled, compressed single-band GeoTIFF profile on ``profile``'s grid."""
    return {
        "driver": "GTiff", "dtype": dtype, "count": 1, "nodata": nodata,
        "crs": profile["crs"], "transform": profile["transform"],
        "width": profile["width"], "height": profile["height"],
        "tiled": True, "blockxsize": BLOCK_SIDE, "blockysize": BLOCK_SIDE, "compress": "deflate",
        "zlevel": 1,  # twice as fast to write as the default 6, and as small on probabilities
        "BIGTIFF": "IF_SAFER",
    }


def gdal_cache(megabytes: int) -> rasterio.Env:
    """A GDAL environment whose block cache is capped at ``megabytes``: by default it may grow to
    5 % of the RAM, which a streaming pass over a large raster fills with blocks it never reuses."""
    return rasterio.Env(GDAL_CACHEMAX=megabytes * 2**20)  # rasterio hands GDAL bytes


@contextlib.contextmanager
def writing(path: Path, problem: str | None = None) -> Iterator[None]:
    """Turn a failed write (full disk, no permission) into a one-line error naming ``path``.

    ``path`` may be a temporary name; the message names the file the user asked for.
    """
    try:
        yield
    except (RasterioError, OSError) as exc:
        if problem is None:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            lines = str(cause).strip().splitlines() or [type(cause).__name__]
            problem = re.sub(r"\S*\.(?:partial|staged)\S*", "the file", lines[0])
        target = final_path(path)
        raise SlidemapError(f"cannot write {target} ({problem}): check free disk space and "
                            f"that {target.parent} is writable") from exc


def verify_raster(path: Path) -> None:
    """Check that every block of ``path`` lies whole in the file: GDAL may report a failed flush
    on close only on stderr, leaving a truncated file that would otherwise be moved into place.

    The tile index is read, not the tiles (decoding every block back took 3 % of a large scene's
    time), and one block is decoded to see that the file reads.
    """
    size = path.stat().st_size
    with writing(path, "it came out incomplete"), rasterio.open(path) as ds:
        last = None
        for (row, col), window in ds.block_windows(1):
            offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1) or 0)
            length = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1) or 0)
            if offset <= 0 or length <= 0 or offset + length > size:
                raise OSError(f"block {row},{col} is missing")
            last = window
        if last is not None:
            ds.read(1, window=last)


class RasterOutputs:
    """The probability (float32, NaN nodata) and mask (uint8, 255 nodata) GeoTIFFs of a scene."""

    def __init__(self, profile: dict, prob_path: Path, mask_path: Path) -> None:
        self.profile = profile
        self.paths = (prob_path, mask_path)
        self.folder = prob_path.parent  # where temporary files of the same run belong
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RasterOutputs:
        try:
            tmps = [self._stack.enter_context(atomic_path(p)) for p in self.paths]
            self._stack.push(lambda *exc_info: self._verify(tmps, exc_info[0]))
            self.prob = self._open(tmps[0], self.paths[0], "float32", float("nan"))
            self.mask = self._open(tmps[1], self.paths[1], "uint8", MASK_NODATA)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def _open(self, tmp: Path, target: Path, dtype: str, nodata: float
              ) -> rasterio.io.DatasetWriter:
        with writing(target):
            ds = rasterio.open(tmp, "w", **geotiff_profile(self.profile, dtype, nodata))

        def close(*exc_info: object) -> None:
            with writing(target):
                ds.close()

        self._stack.push(close)
        return ds

    def _verify(self, tmps: list[Path], exc_type: type[BaseException] | None) -> None:
        if exc_type is None:
            for tmp in tmps:
                verify_raster(tmp)

    def write(self, window: Window, prob: np.ndarray, valid: np.ndarray, threshold: float) -> None:
        mask = np.where(valid, (prob >= threshold).astype(np.uint8), MASK_NODATA)
        with writing(self.paths[0]):
            self.prob.write(np.where(valid, prob, np.nan).astype(np.float32), 1, window=window)
        with writing(self.paths[1]):
            self.mask.write(mask.astype(np.uint8), 1, window=window)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Unwinding in reverse order: datasets close, the files are read back, and only then
        # moved into place. An exception unwinds the same way and removes the temporary files.
        self._stack.__exit__(exc_type, exc, tb)
