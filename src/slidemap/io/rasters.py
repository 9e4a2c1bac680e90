"""Georeferenced raster outputs written strip by strip, moved into place only when complete."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from slidemap.errors import SlidemapError, first_line
from slidemap.io.atomic import atomic_path, final_path, scratch_path

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


@functools.cache
def quiet_libtiff() -> None:
    """Stop libtiff printing its errors straight to stderr ("_tiffWriteProc: File too large."):
    GDAL reports the same failure as an error of its own, which :func:`writing` turns into the
    one line the user sees. Applies to the libtiff bundled with rasterio's wheels; elsewhere
    (GDAL built against a system libtiff) nothing changes."""
    libs = Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs"
    for path in sorted(libs.glob("libtiff-*.so*")):
        with contextlib.suppress(OSError, AttributeError):
            handler = ctypes.CDLL(str(path)).TIFFSetErrorHandler
            handler.restype = ctypes.c_void_p
            handler.argtypes = [ctypes.c_void_p]
            handler(None)


@contextlib.contextmanager
def writing(path: Path, problem: str | None = None) -> Iterator[None]:
    """Turn a failed write (full disk, no permission) into a one-line error naming ``path``.

    ``path`` may be a temporary name; the message names the file the user asked for. GDAL's
    own errors (``CPLE_*``: a full disk met while ``rasterio.shutil.copy`` rewrites a TIFF
    directory) derive from neither RasterioError nor OSError, so they are caught by their base.
    """
    quiet_libtiff()
    try:
        yield
    except (RasterioError, OSError, CPLE_BaseError) as exc:
        if problem is None:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            problem = re.sub(r"\S*\.(?:partial|staged)\S*", "the file", first_line(cause))
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


PROB_DTYPES = ("float32", "uint8")
DEFAULT_PROB_DTYPE = "uint8"  # a twelfth of float32's file and a third of its write CPU
PROB_STEPS = 254  # uint8 probability: 0..254 is p × 254, 255 is nodata
CLASS_NAMES = {0: "background", 1: "landslide"}
# A GeoTIFF palette has no alpha (GDAL writes it opaque); the attribute table keeps it, so a GIS
# that reads the table can leave the background see-through.
MASK_COLOURS = {0: (255, 255, 255, 0), 1: (230, 60, 30, 255), MASK_NODATA: (0, 0, 0, 0)}


@dataclass(frozen=True)
class RasterFormat:
    """How the probability and mask files are written, beside their pixels.

    ``prob_dtype`` uint8 (the default: p × 254 with scale 1/254, 255 nodata; a step of 0.004,
    at most 0.002 off, or one step next to the threshold, so that the file thresholded gives
    the mask; a twelfth of float32's compressed file) or float32 (NaN nodata);
    ``tags`` (provenance) go into both files; ``mask_aux`` is where the mask's category names
    and attribute table go (GDAL's .aux.xml: a GeoTIFF cannot hold them), moved into place
    with the mask by the caller.
    """

    prob_dtype: str = DEFAULT_PROB_DTYPE
    tags: dict[str, str] = field(default_factory=dict)
    mask_aux: Path | None = None

    def __post_init__(self) -> None:
        if self.prob_dtype not in PROB_DTYPES:
            raise SlidemapError(f"probability type {self.prob_dtype!r} is not known: use "
                                f"{' or '.join(PROB_DTYPES)}")


def encode_probability(prob: np.ndarray, valid: np.ndarray, dtype: str,
                       threshold: float | None = None) -> np.ndarray:
    """Probabilities as written: float32 with NaN nodata, or uint8 steps with 255 nodata.

    With ``threshold``, a uint8 step stays on the side of the threshold its probability is on
    (0.499 would round to 127/254 = 0.5): the probability file read back and thresholded gives
    the mask written beside it, pixel for pixel.
    """
    if dtype == "uint8":
        prob = np.clip(np.nan_to_num(prob), 0.0, 1.0)
        steps = np.rint(prob * PROB_STEPS)
        if threshold is not None:  # judged on the value as read back: float32 step × scale
            above = prob >= threshold
            back = steps.astype(np.float32) * np.float32(1 / PROB_STEPS)
            steps[above & (back < threshold)] += 1
            steps[~above & (back >= threshold)] -= 1
        return np.where(valid, steps, MASK_NODATA).astype(np.uint8)
    return np.where(valid, prob, np.nan).astype(np.float32)


def band_scaling(ds: rasterio.io.DatasetReader, band: int = 1) -> tuple[float, float]:
    """(scale, offset) that turn band values into physical values (a uint8 probability)."""
    return float(ds.scales[band - 1] or 1.0), float(ds.offsets[band - 1] or 0.0)


def read_probability(ds: rasterio.io.DatasetReader, window: Window) -> np.ndarray:
    """Probabilities of ``window`` as float32, NaN where the file has no data, whichever type
    the file stores them in. A file masked by its nodata value (as slidemap writes them) is
    compared with it in place: a masked array costs three times as much."""
    scale, offset = band_scaling(ds)
    if ds.mask_flag_enums[0] != [MaskFlags.nodata]:  # an internal mask band, or none
        data = ds.read(1, window=window, masked=True)
        return np.ma.filled(data.astype(np.float32) * scale + offset, np.nan)
    data = ds.read(1, window=window)
    prob = data.astype(np.float32)
    if (scale, offset) != (1.0, 0.0):
        prob *= np.float32(scale)
        prob += np.float32(offset)
    if not np.isnan(ds.nodata):
        prob[data == ds.nodata] = np.nan
    return prob


def category_xml(names: dict[int, str], colours: dict[int, tuple[int, int, int, int]]) -> str:
    """GDAL's auxiliary XML for band 1: category names and a thematic raster attribute table
    (value, class name, colour with alpha), which QGIS and ArcGIS show as the legend."""
    categories = "".join(f"<Category>{escape(names.get(v, ''))}</Category>"
                         for v in range(max(names) + 1))
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8),
              ("Alpha", 0, 9)]
    defs = "".join(f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage>'
                   f"</FieldDefn>" for i, (n, t, u) in enumerate(fields))
    rows = "".join(f'<Row index="{i}"><F>{v}</F><F>{escape(name)}</F>'
                   + "".join(f"<F>{c}</F>" for c in colours[v]) + "</Row>"
                   for i, (v, name) in enumerate(sorted(names.items())))
    return (f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>'
            f'<GDALRasterAttributeTable tableType="thematic">{defs}{rows}'
            "</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>\n")


def cog_options(dtype: str, categorical: bool) -> dict:
    """Creation options of a Cloud-Optimised GeoTIFF with internal overviews (averaged
    probabilities, nearest classes), tiled like the streamed file."""
    options = {"driver": "COG", "COMPRESS": "DEFLATE", "LEVEL": 1, "BLOCKSIZE": 256,
               "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",  # compress on every core
               "OVERVIEW_RESAMPLING": "NEAREST" if categorical else "AVERAGE"}
    if dtype == "float32":
        options["PREDICTOR"] = "YES"  # floating-point predictor: a smaller file
    return options


class RasterOutputs:
    """The probability (float32 NaN nodata, or uint8 255 nodata) and mask (uint8, 255 nodata)
    rasters of a scene, as Cloud-Optimised GeoTIFFs.

    Strips are streamed into tiled scratch GeoTIFFs beside the targets (memory bounded by a
    strip); when all are written, GDAL's COG driver builds the overviews and copies each file
    with its IFDs first, block by block, into the temporary name of the target.
    """

    def __init__(self, profile: dict, prob_path: Path, mask_path: Path,
                 fmt: RasterFormat | None = None) -> None:
        self.profile = profile
        self.paths = (prob_path, mask_path)
        self.format = fmt or RasterFormat()
        self.folder = prob_path.parent  # where temporary files of the same run belong
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RasterOutputs:
        fmt = self.format
        try:
            tmps = [self._stack.enter_context(atomic_path(p)) for p in self.paths]
            works = [self._stack.enter_context(scratch_path(p)) for p in self.paths]
            self._stack.push(lambda *exc_info: self._finish(works, tmps, exc_info[0]))
            prob_nodata = float("nan") if fmt.prob_dtype == "float32" else MASK_NODATA
            self.prob = self._open(works[0], self.paths[0], fmt.prob_dtype, prob_nodata)
            self.mask = self._open(works[1], self.paths[1], "uint8", MASK_NODATA)
            self._describe()
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

    def _describe(self) -> None:
        """Band descriptions, the mask's colours and class names, provenance in both files."""
        fmt = self.format
        with writing(self.paths[0]):
            self.prob.set_band_description(1, "landslide probability")
            if fmt.prob_dtype == "uint8":
                self.prob.scales, self.prob.offsets = (1.0 / PROB_STEPS,), (0.0,)
            self.prob.update_tags(**fmt.tags)
        with writing(self.paths[1]):
            self.mask.set_band_description(1, "landslide mask: 0 background, 1 landslide, "
                                              f"{MASK_NODATA} no data")
            self.mask.write_colormap(1, MASK_COLOURS)
            self.mask.update_tags(1, **{f"CLASS_{v}": n for v, n in CLASS_NAMES.items()})
            self.mask.update_tags(**fmt.tags)

    def _finish(self, works: list[Path], tmps: list[Path],
                exc_type: type[BaseException] | None) -> None:
        """Runs after the scratch files closed: COG copies, read back, before the move."""
        if exc_type is not None:
            return
        for work, tmp, target, dtype in zip(works, tmps, self.paths,
                                            (self.format.prob_dtype, "uint8"), strict=True):
            verify_raster(work)
            with writing(target):
                rasterio.shutil.copy(work, tmp, **cog_options(dtype, target == self.paths[1]))
            verify_raster(tmp)
        if self.format.mask_aux is not None:
            with writing(self.format.mask_aux):
                self.format.mask_aux.write_text(category_xml(CLASS_NAMES, MASK_COLOURS))

    def write(self, window: Window, prob: np.ndarray, valid: np.ndarray, threshold: float) -> None:
        mask = np.where(valid, (prob >= threshold).astype(np.uint8), MASK_NODATA)
        with writing(self.paths[0]):
            self.prob.write(encode_probability(prob, valid, self.format.prob_dtype, threshold),
                            1, window=window)
        with writing(self.paths[1]):
            self.mask.write(mask.astype(np.uint8), 1, window=window)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Unwinding in reverse order: datasets close, the scratch files are read back and
        # copied as COGs, those read back, and only then moved into place. An exception
        # unwinds the same way and removes the temporary and scratch files.
        self._stack.__exit__(exc_type, exc, tb)
