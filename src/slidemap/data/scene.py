"""A georeferenced scene: an image raster, an optional DEM and optional labels.

Everything is read on the image grid. A DEM on another grid, resolution or CRS is warped to it on
the fly, window by window (a GDAL warped VRT), so no whole-scene reprojection is held in memory.
Reads can be decimated by an integer ``factor`` to a coarser working resolution. Labels are a
label raster or landslide polygons (``slidemap.data.vectors``), optionally within an area of
interest; polygons are rasterised window by window onto the grid of each read.
"""

from __future__ import annotations

import contextlib
import math
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from slidemap.data.l4s import split_of_patch
from slidemap.data.names import DatasetName, as_name, local_path
from slidemap.data.patches import alpha_gdal_ignores
from slidemap.data.terrain import (
    BoxSums,
    axes_cosine,
    bounds_centre,
    bounds_in,
    crs_name,
    eight_bit_elevations,
    elevation_to_metres,
    horizontal_crs,
    laplacian_curvature,
    metres_per_unit,
    pixel_size_m,
    radii_px,
    reach_px,
    relief,
    relief_radii_m,
    roughness,
    slope_degrees,
)
from slidemap.data.vectors import PolygonLayer, VectorLabels, covers
from slidemap.data.windows import north_up_flips
from slidemap.errors import SlidemapError, SlidemapWarning, first_line, silenced
from slidemap.schema.values import is_vector

IGNORE = 255
LABEL_VALUES = (0, 1, IGNORE)
LABEL_BLOCK_PX = 4096  # side of the blocks in which labels_landslides reads polygons
MAX_SOURCE_DENSITY = 256  # DEM or label pixels per image pixel (16 times finer a side) read
MIN_DEM_COVER = 0.9  # share of the image's extent below which a DEM's coverage is worth a warning
ALPHA_LOOK_PX = 256  # px a side of the shrunk read that finds a void DEM's alpha's highest value
COARSER = 1.5  # working pixels over this many times resolution_m: beyond a whole factor
OPTICAL_OVERVIEW = 1024  # px a side of the overview the scene's band statistics come from
MAX_NAMED = 4  # subdatasets or archive members a message names
PROBE = 32  # points a side of the grid whose validity places the image sample on the data


def open_raster(name: DatasetName, role: str) -> rasterio.DatasetReader:
    """Open any GDAL dataset name (a local path, ``/vsizip/...``, a URL, ``s3://...``, a
    subdataset, a VRT) or raise a one-line error naming it and what to fix.

    Only a local path is looked up on disk first; any other name goes to GDAL as it is.
    """
    path = local_path(name)
    if path is not None and not path.exists():
        raise SlidemapError(f"{role} {path} does not exist: check the path")
    if path is not None and path.is_dir():
        raise SlidemapError(f"{role} {path} is a folder: pass a raster file (GeoTIFF)")
    try:
        with warnings.catch_warnings():  # a missing CRS is checked (and explained) by the caller
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = _open_past_overviews(name)
    except (RasterioError, UnicodeDecodeError, ValueError) as exc:  # a damaged header too
        hint = ("check the name, the network and the credentials GDAL needs for it"
                if path is None else archive_hint(path) or
                "is it a complete, uncorrupted GeoTIFF?")
        raise SlidemapError(
            f"{role} {name} cannot be read as a raster ({first_line(exc)}): {hint}"
        ) from exc
    try:  # header fields GDAL parses on demand: a damaged one fails here, not mid-run
        _ = (dataset.crs, dataset.transform, dataset.nodatavals, dataset.dtypes)
    except (UnicodeDecodeError, ValueError, RasterioError) as exc:
        dataset.close()
        raise SlidemapError(f"{role} {name} has a header that cannot be read "
                            f"({first_line(exc)}): is it a complete, uncorrupted GeoTIFF?"
                            ) from exc
    if dataset.count == 0:  # a container (netCDF, HDF5) whose rasters are its subdatasets
        subdatasets = dataset.subdatasets
        dataset.close()
        raise SlidemapError(container_message(name, role, subdatasets))
    complex_bands = [d for d in dataset.dtypes if np.issubdtype(np.dtype(d), np.complexfloating)
                     or d.startswith("complex")]
    if complex_bands:
        dataset.close()
        raise SlidemapError(f"{role} {name} has complex-valued bands ({complex_bands[0]}): "
                            "convert it to real values first (e.g. the amplitude with "
                            "gdal_calc.py --calc='abs(A)')")
    return dataset


def container_message(name: DatasetName, role: str, subdatasets: list[str]) -> str:
    """One line for a dataset with no band of its own: a netCDF or HDF file of several
    variables opens as their container, and was refused as a DEM of "0 bands", or as an image
    without georeference, neither saying which name to pass."""
    if not subdatasets:
        return f"{role} {name} has no raster band: pass a raster"
    named = ", ".join(subdatasets[:MAX_NAMED]) + (", ..." if len(subdatasets) > MAX_NAMED
                                                 else "")
    return (f"{role} {name} holds {len(subdatasets)} subdatasets and no band of its own: "
            f"pass one of them ({named})")


def archive_hint(path: Path) -> str | None:
    """What to pass instead of a zip or tar archive, which GDAL does not open as a raster:
    the ``/vsizip/`` or ``/vsitar/`` name of a file inside it (the first ones named); None for
    any other file."""
    try:
        if zipfile.is_zipfile(path):
            handler = "/vsizip/"
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
        elif tarfile.is_tarfile(path):
            handler = "/vsitar/"
            with tarfile.open(path) as archive:
                members = [m.name for m in archive.getmembers() if m.isfile()]
        else:
            return None
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    named = ", ".join(f"{handler}{path}/{m}" for m in members[:MAX_NAMED])
    return f"it is an archive: name the raster inside it ({named or 'it holds no file'})"


def _open_past_overviews(name: DatasetName) -> rasterio.DatasetReader:
    """``name`` opened so that a decimated read averages its full-resolution pixels and never
    takes the file's own overviews (GDAL's ``OVERVIEW_LEVEL=NONE``): GDAL serves an overview for
    a decimated read, and ``gdaladdo``'s default (nearest) overviews moved the sample scene's
    map by 1.8 % of its landslide area, so the map depended on how they were built. A driver
    that cannot open so (netCDF) is opened as it is, and so is a raster without a geotransform
    (a patch's map, a Landslide4Sense mask): opened so, it has none, and rasterio read
    uninitialised memory as its transform, so two such rasters of one size never matched."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGeoreferencedWarning)
            dataset = rasterio.open(as_name(name), OVERVIEW_LEVEL="NONE")
    except (RasterioError, CPLE_BaseError):
        return rasterio.open(as_name(name))
    others = [w for w in caught if not issubclass(w.category, NotGeoreferencedWarning)]
    for warning in others:  # passed on as they came
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    if len(others) < len(caught):
        dataset.close()
        return rasterio.open(as_name(name))  # the identity transform, as GDAL gives it
    return dataset


def check_label_dtype(dataset: rasterio.DatasetReader, path: str | Path) -> None:
    """Labels are whole numbers: a floating-point raster is a probability or a measurement,
    and rounding it into classes would score or train on something nobody labelled."""
    dtype = dataset.dtypes[0]
    if not np.issubdtype(np.dtype(dtype), np.integer):
        dataset.close()
        raise SlidemapError(f"label raster {path} holds {dtype} values: labels must be an "
                            "integer raster of 0 (background), 1 (landslide) and 255 (ignore)")


@contextlib.contextmanager
def reading(role: str, path: str | Path | None) -> Iterator[None]:
    """Turn a GDAL failure while reading (a truncated or corrupt file) into a one-line error."""
    try:
        yield
    except RasterioError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        raise SlidemapError(
            f"{role} {path} cannot be read ({first_line(cause)}): is it a complete, "
            "uncorrupted GeoTIFF?"
        ) from exc


class Scene:
    """Reads aligned windows of image, DEM, slope and labels as a sample dict of arrays."""

    def __init__(
        self,
        image: DatasetName,
        dem: DatasetName | None = None,
        mask: DatasetName | None = None,
        require_crs: bool = True,
        apply_scale: bool = False,
        aoi: str | Path | None = None,
        warn_dem: bool = True,
        role: str = "image",
    ) -> None:
        """``mask``: a label raster or a vector file of landslide polygons; ``aoi``: polygons
        of the area that was labelled (outside: 255), see ``slidemap.data.vectors``;
        ``apply_scale``: image values read through the bands' GDAL scale and offset (a
        probability stored as uint8 steps reads back as 0..1); ``warn_dem`` False where
        the same image and DEM were opened (and warned about) earlier in the run;
        ``role``: what the image is to the user (``prediction`` for ``evaluate``), in errors."""
        self.image_path = as_name(image)
        self.dem_path = as_name(dem) if dem is not None else None
        self.mask_path = as_name(mask) if mask is not None else None
        self.role = role
        split = split_of_patch(image)
        if split is not None:
            raise SlidemapError(f"{role} {image} is one Landslide4Sense patch, not a scene "
                                "(GDAL reads it as bands 14 px wide): pass its split folder "
                                f"{split} to predict, which maps every patch")
        self._image = open_raster(image, role)
        self._apply_scale = apply_scale
        self._shadowed = _nodata_shadows_alpha(self._image)
        self._alpha = alpha_gdal_ignores(self._image)
        self._floating = any(np.issubdtype(np.dtype(d), np.floating) for d in self._image.dtypes)
        self._dem_src: rasterio.DatasetReader | None = None
        self._dem: WarpedVRT | None = None
        self._dem_to_m = (1.0, 0.0)  # (scale, offset) that turn the DEM's stored values into m
        self._dem_extent_cover = 1.0  # share of the image's extent inside the DEM's
        self._mask_src: rasterio.DatasetReader | None = None
        self._mask: rasterio.DatasetReader | WarpedVRT | None = None
        self._vectors: VectorLabels | None = None
        self._optical_stats: dict[tuple[int, ...], np.ndarray] = {}
        # samples read once per Scene: each check of a run looks at the same ones, and each
        # sample is hundreds of small reads (over the network for a remote DEM)
        self._samples: dict[tuple[object, ...], np.ndarray] = {}
        self._last_mask: tuple[tuple[object, ...], np.ndarray] | None = None  # see _window_mask
        try:
            problem = georeference_problem(self._image, image) if require_crs else None
            if problem:
                raise SlidemapError(problem)
            if dem is not None:
                self._dem_src = open_raster(dem, "DEM")
                if self._dem_src.count != 1 and not _elevation_and_alpha(self._dem_src):
                    raise SlidemapError(f"DEM {dem} has {self._dem_src.count} bands: pass a "
                                        "single-band elevation raster (an image passed as "
                                        "--dem?), or pick its band with gdal_translate -b N")
                self._dem_to_m = elevation_to_metres(self._dem_src, dem)
                self._dem = self._align(self._dem_src, dem, "DEM", Resampling.bilinear)
                if warn_dem:
                    self._warn_dem(self._dem_src, dem)
            polygons = mask if mask is not None and is_vector(mask) else None
            if mask is not None and polygons is None:
                self._mask_src = open_raster(mask, "label raster")
                check_label_dtype(self._mask_src, mask)
                self._mask = self._align(self._mask_src, mask, "label raster", Resampling.nearest)
            if polygons is not None or aoi is not None:
                if self._image.crs is None:
                    raise SlidemapError(f"{role} {image} has no CRS: polygons cannot be placed on "
                                        "it; assign one (e.g. gdal_edit.py -a_srs EPSG:32647)")
                self._vectors = VectorLabels(self._image.crs, tuple(self._image.bounds),
                                             polygons, aoi)
        except Exception:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------------
    def _align(self, src: rasterio.DatasetReader, path: str | Path, role: str,
               resampling: Resampling) -> rasterio.DatasetReader | WarpedVRT:
        """Return ``src`` itself if it is on the image grid, else a warped VRT onto that grid."""
        img = self._image
        if src.crs is None:
            if src.shape == img.shape and src.transform == img.transform:
                return src
            raise SlidemapError(f"{role} {path} has no CRS: assign one so it can be aligned")
        if img.crs is None:
            raise SlidemapError(f"{self.role} {self.image_path} has no CRS: cannot align "
                                f"{role} {path}")
        bounds = bounds_in(src.crs, img.crs, src.bounds)
        if bounds is None:
            raise SlidemapError(
                f"{role} {path} is in {crs_name(src.crs)}, which cannot be reprojected to "
                f"{self.role} {self.image_path}'s CRS {crs_name(img.crs)}: warp it onto the "
                "image's CRS, or assign it its real CRS (e.g. gdal_edit.py -a_srs EPSG:32647)")
        covered = _covered_fraction(bounds, img.bounds)
        if role == "DEM":
            self._dem_extent_cover = covered
        if covered == 0:  # apart, or sharing only an edge
            raise SlidemapError(
                f"{role} {path} does not overlap image {self.image_path}: "
                "pass a file that covers the same ground"
            )
        on_grid = horizontal_crs(src.crs) == horizontal_crs(img.crs) \
            and src.transform == img.transform and src.shape == img.shape
        # An integer DEM goes through a float32 VRT even on the image grid: GDAL's decimated
        # read of an integer band rounds each average to a whole unit, and those 1 m steps at
        # 2 m pixels gave a curvature noisier than the terrain's own. So does a DEM with an
        # alpha band: the warper masks by it (GDAL's own mask ignores a float alpha band).
        alpha = 2 if role == "DEM" and _elevation_and_alpha(src) else 0
        if on_grid and (role != "DEM" or (not alpha and np.issubdtype(np.dtype(src.dtypes[0]),
                                                                      np.floating))):
            return src
        self._check_density(src, bounds, path, role)
        if role == "DEM":
            return WarpedVRT(
                src, crs=img.crs, transform=img.transform, width=img.width, height=img.height,
                resampling=resampling, nodata=math.nan, dtype="float32", src_alpha=alpha,
            )
        # A label's value is its class (0, 1, 255) on any grid, as a read on the image grid
        # takes it: a raster's nodata of 0 (gdal_rasterize -a_nodata 0) must not turn all
        # background into ignore. Ground the labels do not cover is ignore.
        return WarpedVRT(
            src, crs=img.crs, transform=img.transform, width=img.width, height=img.height,
            resampling=resampling, src_nodata=None, nodata=IGNORE, dtype=src.dtypes[0],
        )

    def _warn_dem(self, src: rasterio.DatasetReader, dem: DatasetName) -> None:
        """Warn about a DEM that is read but likely wrong: 8-bit values, or too small an
        extent."""
        grey = eight_bit_elevations(src, dem)
        if grey:
            warnings.warn(grey, SlidemapWarning, stacklevel=3)
        if self._dem_extent_cover < MIN_DEM_COVER and self._dem_under_valid() < MIN_DEM_COVER:
            warnings.warn(f"DEM {dem} covers only {self._dem_extent_cover:.0%} of image "
                          f"{self.image_path}: the rest is mapped as no data; pass a DEM of the "
                          "whole scene", SlidemapWarning, stacklevel=3)

    def _check_density(self, src: rasterio.DatasetReader, bounds: tuple[float, ...],
                       path: str | Path, role: str) -> None:
        """Refuse, before a window is warped, a raster on a grid so much finer than the
        image's that warping one window reads its pixels by the thousand per image pixel (a
        1 cm DEM under a 0.5 m image: GDAL failed to allocate 4 GB after 20 s, and the error
        asked whether the file was corrupt). ``bounds``: its extent in the image's CRS."""
        img = self._image
        extent = _area(bounds)
        if extent <= 0:
            return
        density = (src.width * src.height / extent) / (img.width * img.height / _area(img.bounds))
        if density > MAX_SOURCE_DENSITY:
            side = math.sqrt(extent / (src.width * src.height))
            image_side = math.sqrt(_area(img.bounds) / (img.width * img.height))
            raise SlidemapError(
                f"{role} {path} has pixels {math.sqrt(density):,.0f} times finer than image "
                f"{self.image_path} ({side:.3g} against {image_side:.3g} CRS units): warping "
                f"it would read {density:,.0f} of its pixels for each image pixel; resample it "
                f"to the image's pixel size first (gdalwarp -tr {image_side:.3g} "
                f"{image_side:.3g} -r {'average' if role == 'DEM' else 'mode'})")

    def close(self) -> None:
        for ds in (self._dem, self._dem_src, self._mask, self._mask_src, self._image):
            if ds is not None and not ds.closed:
                ds.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- properties -----------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self._image.height

    @property
    def width(self) -> int:
        return self._image.width

    @property
    def band_count(self) -> int:
        return self._image.count

    @property
    def colours(self) -> tuple[str, ...]:
        """Each band's colour interpretation as GDAL declares it (``red``, ``gray``, ...)."""
        return tuple(colour.name for colour in self._image.colorinterp)

    @property
    def has_dem(self) -> bool:
        return self._dem is not None

    @property
    def dem_extent_cover(self) -> float:
        """The share of the image's extent that the DEM's extent covers (1 without a DEM): below
        ``MIN_DEM_COVER`` the scene has already looked at the DEM's data under the image's valid
        pixels when it opened the DEM, and warned where it falls short."""
        return self._dem_extent_cover

    def _dem_under_valid(self) -> float:
        """The share of the image's sampled valid pixels that have an elevation (0 where none
        is valid). An image with no data outside a DEM clipped to its footprint (an orthophoto's
        collar, a study band) lost nothing: warning that the rest is mapped as no data sent
        users for a larger DEM they did not need."""
        valid = self.valid_sample()
        if not valid.any():
            return 0.0
        return float(np.isfinite(self.dem_sample()[valid]).mean())

    def dem_void(self) -> str | None:
        """The one-line error for a read that found no valid pixel where the DEM is the cause:
        the image has data (sampled) and the DEM none under it, so blaming the image's nodata
        sent users to the wrong file. None without a DEM, or where the DEM has data there."""
        if self._dem is None:
            return None
        valid = self.valid_sample()
        if not valid.any() or np.isfinite(self.dem_sample()[valid]).any():
            return None
        return _faint_alpha(self._dem_src, self.dem_path) or (
            f"DEM {self.dem_path} has no data under image {self.image_path} (all nodata "
            "there): check its nodata value, or pass a DEM that covers the image's ground")

    @property
    def has_labels(self) -> bool:
        return self._mask is not None or (self._vectors is not None
                                          and self._vectors.polygons is not None)

    @property
    def label_polygons(self) -> int | None:
        """How many polygons the label file holds; None when the labels are not polygons."""
        if self._vectors is None or self._vectors.polygons is None:
            return None
        return self._vectors.polygons.features

    @property
    def labels_landslides(self) -> bool | None:
        """Whether label polygons cover more than a pixel of the image (inside the AOI, if there
        is one); None when the labels are not polygons."""
        if self._vectors is None or self._vectors.polygons is None:
            return None
        x_res, y_res = self._image.res
        block = LABEL_BLOCK_PX * max(abs(x_res), abs(y_res))
        return self._vectors.labels_landslides(self.bounds, block, abs(x_res * y_res))

    def shares_aoi(self, other: str | Path) -> bool:
        """Whether the area of interest ``other`` covers more than a pixel of this scene's AOI
        on the image (True without an AOI: the whole image is labelled): two parts of one
        scene, as training and validation of a spatial split, that share labelled ground."""
        if self._vectors is None or self._vectors.aoi is None:
            return True
        x_res, y_res = self._image.res
        block = LABEL_BLOCK_PX * max(abs(x_res), abs(y_res))
        layer = PolygonLayer(other, "area of interest", self._image.crs)
        return covers(layer, self._vectors.aoi, self.bounds, block, abs(x_res * y_res))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The image's (west, south, east, north) in its CRS."""
        west, south, east, north = self._image.bounds
        return west, south, east, north

    def labelled_window(self) -> Window:
        """The part of the grid that labels can cover: a label raster's extent, within the
        AOI's (every pixel outside both reads 255), padded a pixel; the whole grid where
        polygons label it all. ``evaluate`` of a vast mosaic against a small truth walked
        every window of the mosaic."""
        extents = []
        if self._mask_src is not None and self._mask is not self._mask_src:
            extents.append(transform_bounds(self._mask_src.crs, self._image.crs,
                                            *self._mask_src.bounds))
        aoi = self._vectors.aoi if self._vectors is not None else None
        if aoi is not None and aoi.bounds is not None:
            extents.append(aoi.bounds)
        whole = Window(0, 0, self.width, self.height)
        if not extents:
            return whole
        west, south = max(e[0] for e in extents), max(e[1] for e in extents)
        east, north = min(e[2] for e in extents), min(e[3] for e in extents)
        inverse = ~self._image.transform
        cols, rows = zip(*(inverse * corner for corner in
                           ((west, south), (west, north), (east, south), (east, north))),
                         strict=True)
        left, top = max(0, math.floor(min(cols)) - 1), max(0, math.floor(min(rows)) - 1)
        right = min(self.width, math.ceil(max(cols)) + 1)
        bottom = min(self.height, math.ceil(max(rows)) + 1)
        if west >= east or south >= north or left >= right or top >= bottom:
            return Window(0, 0, 0, 0)
        return Window(left, top, right - left, bottom - top)

    @property
    def profile(self) -> dict:
        """Georeference of the image grid (crs, transform, width, height) for output rasters."""
        img = self._image
        return {"crs": img.crs, "transform": img.transform, "width": img.width,
                "height": img.height}

    @property
    def flips(self) -> tuple[bool, bool]:
        """Whether the stored rows and columns run against north up, west left (a south-up
        grid, one stored east to west): the model sees its windows flipped back."""
        return north_up_flips(self._image.transform)

    def pixel_size_m(self) -> tuple[float, float]:
        """Native pixel size in metres, at the scene centre (where a CRS unit's ground size
        varies: degrees, Web Mercator); one size for the whole scene, so that a pixel's slope
        does not depend on the window it is read in."""
        img = self._image
        if img.crs is None:
            return abs(img.res[0]), abs(img.res[1])
        return pixel_size_m(img.crs, img.res, bounds_centre(img.bounds))

    def axes_cos(self) -> float:
        """Cosine of the angle on the ground between the grid's column and row steps, at the
        scene centre (:func:`terrain.axes_cosine`): 0 unless the geotransform is sheared."""
        img = self._image
        if img.transform.b == 0 and img.transform.d == 0:
            return 0.0
        centre = bounds_centre(img.bounds)
        return axes_cosine(img.transform, (1.0, 1.0) if img.crs is None
                           else metres_per_unit(img.crs, *centre))

    def decimation(self, resolution_m: float | None) -> int:
        """Integer read factor that brings native pixels closest to ``resolution_m``."""
        if resolution_m is None:
            return 1
        native = min(self.pixel_size_m())
        return max(1, round(resolution_m / native))

    def working_step_m(self, window: Window, factor: int) -> tuple[float, float]:
        """(dx, dy) in metres of a pixel of ``window`` read at ``factor``, as :meth:`read`
        shapes it: the factor times the native size only where the window's sides divide by
        it, and the terrain radii in pixels follow this step (a check of how far they reach,
        crossval's, must take the same one)."""
        out_h = max(1, round(window.height / factor))
        out_w = max(1, round(window.width / factor))
        dx, dy = self.pixel_size_m()
        return dx * window.width / out_w, dy * window.height / out_h

    def coarser_than(self, resolution_m: float | None) -> str | None:
        """A one-line warning when the scene's pixels are coarser than ``resolution_m`` by more
        than a whole read factor can bring (``COARSER``): scenes are decimated, never
        up-sampled, so such a scene is read at its own pixels and a model sees its landslides
        that many times smaller than on the ground it is trained or working at; None otherwise."""
        if resolution_m is None:
            return None
        working = min(self.pixel_size_m()) * self.decimation(resolution_m)
        if working <= COARSER * resolution_m:
            return None
        return (f"image {self.image_path} has {working:.3g} m pixels, coarser than the working "
                f"resolution_m {resolution_m:g}: scenes are only decimated, so it is read at "
                f"{working:.3g} m and its landslides look {working / resolution_m:.1f} times "
                f"smaller than at {resolution_m:g} m; resample it first (gdalwarp -tr "
                f"{resolution_m:g} {resolution_m:g} -r bilinear) or leave it out")

    def check_bands(self, bands: tuple[int, ...], what: str) -> None:
        """Refuse an image without the bands ``what`` reads; a paletted image (one band of
        colour-table indices, whose colours the model never sees) is told how to expand it."""
        if max(bands) > self.band_count and self.colours[0] == ColorInterp.palette.name:
            raise SlidemapError(
                f"image {self.image_path} is paletted (one band of colour-table indices) but "
                f"{what} reads bands {list(bands)} of colours: expand it first (gdal_translate "
                f"-expand rgb {self.image_path} rgb.tif)")
        if max(bands) > self.band_count:
            raise SlidemapError(
                f"image {self.image_path} has {self.band_count} band(s) but {what} needs bands "
                f"{list(bands)}: pass an image with those bands"
            )

    # -- reading --------------------------------------------------------------------------
    def read(self, window: Window, bands: tuple[int, ...], factor: int = 1,
             dem: bool = False, slope: bool = False,
             relief_m: float | tuple[float, ...] | None = None, curvature: bool = False,
             roughness_m: float | None = None) -> dict[str, np.ndarray]:
        """Read one window, decimated by ``factor``, as a sample dict.

        Keys: ``image`` (C,h,w) float32, ``valid`` (h,w) bool, and when asked ``dem`` (1,h,w) in
        metres with NaN for nodata, ``slope`` (1,h,w) degrees, ``relief`` (k,h,w) metres above
        the mean elevation within each radius of ``relief_m`` (see ``terrain.relief``),
        ``curvature`` (1,h,w) in 1/100 m, ``roughness`` (1,h,w) metres within ``roughness_m``,
        ``mask`` (h,w) uint8 with 255 ignore. Terrain descriptors are computed from a DEM read
        with a halo around the window, so a window gives the values a read of the whole scene
        gives there.
        """
        out_h = max(1, round(window.height / factor))
        out_w = max(1, round(window.width / factor))
        img = self._image
        with reading(self.role, self.image_path):
            image = img.read(bands, window=window, out_shape=(len(bands), out_h, out_w),
                             resampling=Resampling.average if factor > 1 else Resampling.nearest)
            valid = self._window_mask(window, (out_h, out_w)) > 0
        image = image.astype(np.float32)
        valid &= np.isfinite(image).all(axis=0)  # a decimated read averages a NaN in
        if self._apply_scale:
            scales = np.array([img.scales[b - 1] or 1.0 for b in bands], np.float32)
            offsets = np.array([img.offsets[b - 1] or 0.0 for b in bands], np.float32)
            image = image * scales[:, None, None] + offsets[:, None, None]
        sample: dict[str, np.ndarray] = {"image": image, "valid": valid}
        relief_radii = relief_radii_m(relief_m)
        if dem or slope or relief_radii or curvature or roughness_m:
            if self._dem is None:
                raise SlidemapError(
                    f"the model needs a DEM for {self.image_path}: pass one with --dem"
                )
            step = self.working_step_m(window, factor)
            radii, rough = radii_px(relief_m, roughness_m, step)
            stencil = int(slope or curvature)
            boxes = reach_px([*radii, rough])
            margin = max(boxes[0], stencil), max(boxes[1], stencil)
            if any(margin):  # one read serves all: the halo's core is the window's elevation
                halo, (top, left) = self._dem_with_halo(window, out_h, out_w, margin)
                elevation = halo[top:top + out_h, left:left + out_w]
            else:
                elevation = self._read_dem(window, out_h, out_w)

            def core(values: np.ndarray) -> np.ndarray:
                return values[top:top + out_h, left:left + out_w][None].astype(np.float32)

            finite = np.isfinite(elevation)
            sample["valid"] &= finite
            if dem:
                sample["dem"] = np.where(finite, elevation, np.nan)[None].astype(np.float32)
            if any(boxes):  # one set of box-sum tables for every radius
                sums = BoxSums(halo, boxes)
                if radii:
                    sample["relief"] = np.concatenate([core(relief(sums, r)) for r in radii])
                if roughness_m:
                    sample["roughness"] = core(roughness(sums, rough))
            if slope:
                sample["slope"] = _core_slope(halo, top, left, out_h, out_w, step,
                                              self.axes_cos())
            if curvature:
                sample["curvature"] = core(laplacian_curvature(halo, step, self.axes_cos()))
        if self.has_labels:
            sample["mask"] = self._read_mask(window, out_h, out_w)
        return sample

    def optical_stats(self, bands: tuple[int, ...]) -> np.ndarray:
        """(2, C) mean and standard deviation of each band over the scene's valid pixels, from
        an overview of at most ``OPTICAL_OVERVIEW`` px a side: one pair per scene, so that every
        window is normalised alike (per-scene photometric normalisation, no seams)."""
        if bands not in self._optical_stats:
            shrink = max(1.0, max(self.height, self.width) / OPTICAL_OVERVIEW)
            shape = (max(1, round(self.height / shrink)), max(1, round(self.width / shrink)))
            with reading(self.role, self.image_path):
                image = self._image.read(bands, out_shape=(len(bands), *shape),
                                         resampling=Resampling.nearest)
                valid = self._dataset_mask(out_shape=shape) > 0
            if not valid.any():
                raise SlidemapError(f"image {self.image_path} has no valid pixel (all nodata): "
                                    "check its nodata value")
            pixels = image[:, valid].astype(np.float64)
            self._optical_stats[bands] = np.stack([pixels.mean(axis=1), pixels.std(axis=1)])
        return self._optical_stats[bands]

    def read_validity(self, window: Window, dem: bool = False) -> np.ndarray:
        """Native-resolution validity of a window: image data present and, if asked, DEM finite."""
        with reading(self.role, self.image_path):
            valid = self._dataset_mask(window=window) > 0
        if dem and self._dem is not None:
            valid &= np.isfinite(self._read_dem(window, int(window.height), int(window.width)))
        return valid

    def labelled(self, factor: int) -> np.ndarray:
        """(h, w) bool of the whole scene read at ``factor``, as :meth:`read` shapes it: image
        data present and labelled (inside the AOI, if there is one), DEM holes aside. The
        ground a training window counts, without reading the channels."""
        window = Window(0, 0, self.width, self.height)
        out_h, out_w = max(1, round(self.height / factor)), max(1, round(self.width / factor))
        with reading("image", self.image_path):
            valid = self._dataset_mask(window=window, out_shape=(out_h, out_w)) > 0
        if self.has_labels:
            valid &= self._read_mask(window, out_h, out_w) != IGNORE
        return valid

    def any_valid(self, window: Window, factor: int = 1) -> bool:
        """Whether the image has data in ``window``, from the same decimated mask :meth:`read`
        uses: a cheap test that skips empty windows before their DEM and slope are read."""
        out_shape = (max(1, round(window.height / factor)), max(1, round(window.width / factor)))
        with reading(self.role, self.image_path):
            return bool(self._window_mask(window, out_shape).any())

    def _window_mask(self, window: Window, out_shape: tuple[int, int]) -> np.ndarray:
        """:meth:`_dataset_mask` of ``window`` at ``out_shape``, the last one kept: the window
        :meth:`any_valid` tests is the one :meth:`read` reads next, and its mask computed again
        read the image again (every band of a floating-point image, the band a nodata value
        masks)."""
        key = (window, out_shape)
        last = self._last_mask
        if last is None or last[0] != key:
            mask = _read_only(self._dataset_mask(window=window, out_shape=out_shape))
            last = self._last_mask = key, mask
        return last[1]

    def dem_sample(self, side: int = 16, size: int = 32) -> np.ndarray:
        """Elevations (metres, NaN nodata) in ``side`` × ``side`` small windows spread over the
        scene, flattened: a cheap look at a scene's elevations (a few hundred blocks read,
        whatever the scene's size; a shrunk read of the whole DEM decodes every block). Read
        once per Scene (read-only)."""
        key = ("dem", side, size)
        if key not in self._samples:
            self._samples[key] = _read_only(self._read_dem_sample(side, size))
        return self._samples[key]

    def _read_dem_sample(self, side: int, size: int) -> np.ndarray:
        """The elevations :meth:`dem_sample` returns, read."""
        return np.concatenate([self._read_dem(window, int(window.height),
                                              int(window.width)).ravel()
                               for window in self._sample_windows(side, size)])

    def valid_sample(self, side: int = 16, size: int = 32) -> np.ndarray:
        """Whether the image has data at each pixel :meth:`dem_sample` returns (same windows,
        same order), flattened: which of the sampled elevations lie under the image's valid
        pixels. Read once per Scene (read-only)."""
        key = ("valid", side, size)
        if key not in self._samples:
            with reading(self.role, self.image_path):
                self._samples[key] = _read_only(np.concatenate(
                    [(self._dataset_mask(window=window) > 0).ravel()
                     for window in self._sample_windows(side, size)]))
        return self._samples[key]

    def _sample_windows(self, side: int, size: int) -> list[Window]:
        """``side`` × ``side`` windows of ``size`` px (at most the scene's) spread evenly over
        the scene, row by row: where the DEM and validity samples are read."""
        size = min(size, self.height, self.width)
        rows = np.linspace(0, self.height - size, side).round().astype(int)
        cols = np.linspace(0, self.width - size, side).round().astype(int)
        return [Window(col, row, size, size) for row in sorted(set(rows.tolist()))
                for col in sorted(set(cols.tolist()))]

    def image_sample(self, bands: tuple[int, ...], side: int = 4, size: int = 64) -> np.ndarray:
        """Values of the image's ``bands`` in up to ``side`` × ``side`` small windows spread
        over the scene's data (:meth:`_data_windows`), as (C, N) float32 with NaN where the
        image has no data: a cheap look at its values (at most a few thousand blocks read,
        whatever the scene's size) before it is predicted. Read once per Scene and bands
        (read-only)."""
        key = ("image", tuple(bands), side, size)
        if key not in self._samples:
            self._samples[key] = _read_only(self._read_image_sample(tuple(bands), side, size))
        return self._samples[key]

    def _read_image_sample(self, bands: tuple[int, ...], side: int, size: int) -> np.ndarray:
        """The values :meth:`image_sample` returns, read."""
        parts = []
        with reading(self.role, self.image_path):
            for window in self._data_windows(side, size):
                data = self._image.read(list(bands), window=window).astype(np.float32)
                valid = self._dataset_mask(window=window) > 0
                parts.append(np.where(valid, data, np.nan).reshape(len(bands), -1))
        return np.concatenate(parts, axis=1)

    def _data_windows(self, side: int, size: int) -> list[Window]:
        """At most ``side`` × ``side`` windows of ``size`` px (at most the scene's) centred on
        points of a ``PROBE`` × ``PROBE`` grid where the image has data, spread evenly over
        those points: a scene whose data fills a sliver of its extent is sampled on its data
        (16 windows spread over the extent caught 19 × 19 px of one river bank and warned of
        another scale). :meth:`_sample_windows`'s grid where no point has data."""
        size = min(size, self.height, self.width)
        shape = (min(PROBE, self.height), min(PROBE, self.width))
        points = np.argwhere(self._dataset_mask(out_shape=shape) > 0)
        if points.size == 0:
            return self._sample_windows(side, size)
        picks = np.unique(np.linspace(0, len(points) - 1, side * side).round().astype(int))
        windows = []
        for row, col in points[picks].tolist():
            top = round((row + 0.5) * self.height / shape[0] - size / 2)
            left = round((col + 0.5) * self.width / shape[1] - size / 2)
            windows.append(Window(min(max(0, left), self.width - size),
                                  min(max(0, top), self.height - size), size, size))
        return windows

    def _dataset_mask(self, window: Window | None = None,
                      out_shape: tuple[int, int] | None = None) -> np.ndarray:
        """The image's validity mask (0 = no data). An image whose nodata value GDAL lets
        override an alpha band (a 4-band RGB + NIR read as RGBA) is masked by its nodata value,
        as it should be, without rasterio's NodataShadowWarning printing a source line; one
        whose alpha band GDAL's mask leaves out is masked by that band. A floating-point
        image is also no data where a band is NaN or infinite: GDAL masks NaN only when NaN is
        the declared nodata value (and then only where every band is NaN), and a NaN let
        through is read as the band's mean and mapped as if it were ground."""
        if not self._shadowed:
            mask = self._image.dataset_mask(window=window, out_shape=out_shape)
        else:
            with silenced(NodataShadowWarning):
                mask = self._image.dataset_mask(window=window, out_shape=out_shape)
        if self._alpha is not None:
            alpha = self._image.read(self._alpha, window=window, out_shape=out_shape,
                                     resampling=Resampling.nearest)
            mask = np.where(alpha > 0, mask, 0).astype(mask.dtype)
        if not self._floating:
            return mask
        shape = None if out_shape is None else (self.band_count, *out_shape)
        values = self._image.read(window=window, out_shape=shape, resampling=Resampling.nearest)
        return np.where(np.isfinite(values).all(axis=0), mask, 0).astype(mask.dtype)

    def terrain(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Elevation (m, NaN nodata) and slope (degrees) of ``window`` at native resolution."""
        height, width = int(window.height), int(window.width)
        halo, (top, left) = self._dem_with_halo(window, height, width)
        slope = _core_slope(halo, top, left, height, width, self.pixel_size_m(),
                            self.axes_cos())
        return halo[top:top + height, left:left + width], slope[0]

    def _read_dem(self, window: Window, out_h: int, out_w: int) -> np.ndarray:
        """Elevation in metres, NaN where the DEM has no data.

        A DEM masked by its nodata value alone (the usual case) is read once and compared with
        it: the same pixels a masked read finds, but GDAL's nodata mask band would redo the
        resampling to find them, making the read four times slower.
        """
        if self._dem is None:
            raise SlidemapError(f"no DEM was given for {self.image_path}: pass one with --dem")
        with reading("DEM", self.dem_path):
            if self._dem.mask_flag_enums[0] not in ([MaskFlags.nodata], [MaskFlags.all_valid]):
                data = self._dem.read(1, window=window, out_shape=(out_h, out_w),
                                      resampling=Resampling.bilinear, masked=True)
                return self._metres(np.ma.filled(data.astype(np.float32), np.nan))
            data = self._dem.read(1, window=window, out_shape=(out_h, out_w),
                                  resampling=Resampling.bilinear)
        nodata = self._dem.nodata
        if nodata is not None and not np.isnan(nodata):
            data = np.where(data == nodata, np.nan, data)
        return self._metres(data)

    def _metres(self, stored: np.ndarray) -> np.ndarray:
        """Elevations in metres from the DEM's stored values (its scale, offset and unit), NaN
        where infinite: an infinite elevation is nodata, and the terrain stencils fill only a
        NaN neighbour, so an infinity gave its valid neighbours a slope of 90° and an infinite
        curvature."""
        scale, offset = self._dem_to_m
        if (scale, offset) == (1.0, 0.0):
            metres = stored.astype(np.float32, copy=False)
        else:
            metres = (stored.astype(np.float64) * scale + offset).astype(np.float32)
        metres[np.isinf(metres)] = np.nan  # in place: both callers pass a fresh read
        return metres

    def _dem_with_halo(self, window: Window, out_h: int, out_w: int,
                       margin: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, tuple[int, int]]:
        """Elevation of the window with a halo of up to ``margin`` (rows, columns) working pixels
        on each side, as far as the scene reaches, and the (top, left) offset of the window in
        it. The core is
        a read of the window alone (GDAL resamples each output pixel from the same source
        pixels; where the window is not a multiple of the decimation, up to float rounding)."""
        fy = window.height / out_h
        fx = window.width / out_w

        def fits(space: float, step: float, most: int) -> int:
            return min(most, math.floor(space / step + 1e-6))

        top = fits(window.row_off, fy, margin[0])
        left = fits(window.col_off, fx, margin[1])
        bottom = fits(self.height - window.row_off - window.height, fy, margin[0])
        right = fits(self.width - window.col_off - window.width, fx, margin[1])
        halo = Window(window.col_off - left * fx, window.row_off - top * fy,
                      window.width + (left + right) * fx, window.height + (top + bottom) * fy)
        return self._read_dem(halo, out_h + top + bottom, out_w + left + right), (top, left)

    def _read_mask(self, window: Window, out_h: int, out_w: int) -> np.ndarray:
        """Labels of a window: the label raster read by nearest neighbour (values checked before
        any cast), or the polygons burnt at the centres of the (decimated) pixels; then the AOI
        if there is one."""
        labels = None
        if self._mask is not None:
            with reading("label raster", self.mask_path):
                labels = self._mask.read(1, window=window, out_shape=(out_h, out_w),
                                         resampling=Resampling.nearest)
            if labels.dtype != np.uint8:  # a cast would turn 256 into 0 and -1 into 255
                unexpected = np.setdiff1d(np.unique(labels), LABEL_VALUES)
                if unexpected.size:
                    raise SlidemapError(
                        f"label raster {self.mask_path} has values {unexpected[:5].tolist()}: "
                        "labels must be 0 (background), 1 (landslide) or 255 (ignore)")
            labels = labels.astype(np.uint8)
        if self._vectors is None:
            assert labels is not None
            return labels
        grid = window_transform(window, self._image.transform) @ Affine.scale(
            window.width / out_w, window.height / out_h)
        return self._vectors.read(grid, (out_h, out_w), labels)


def georeference_problem(dataset: rasterio.DatasetReader, name: DatasetName) -> str | None:
    """Why ``dataset`` cannot be placed on the ground, as one line that says what to do; None
    when it has a CRS and a geotransform. Ground control points or RPCs alone are not a grid:
    the image has to be warped onto one."""
    gcps, gcp_crs = dataset.gcps
    if dataset.crs is None and gcps:
        code = gcp_crs.to_epsg() if gcp_crs is not None else None
        target = f"EPSG:{code}" if code else "EPSG:32647"
        return (f"image {name} is georeferenced by ground control points only: warp it onto a "
                f"grid first (e.g. gdalwarp -t_srs {target} -r bilinear in.tif out.tif)")
    if dataset.crs is None and dataset.rpcs:
        return (f"image {name} is georeferenced by RPCs only: orthorectify it first (e.g. "
                "gdalwarp -rpc -t_srs EPSG:32647 -to RPC_DEM=dem.tif in.tif out.tif)")
    no_transform = dataset.transform == Affine.identity()
    srs = prj_beside(name) or "EPSG:32647"
    if dataset.crs is None and no_transform:
        return (f"image {name} has no CRS and no geotransform: georeference it (e.g. "
                f"gdal_edit.py -a_srs {srs} -a_ullr ULX ULY LRX LRY)")
    if dataset.crs is None:
        return f"image {name} has no CRS: assign one (e.g. gdal_edit.py -a_srs {srs})"
    if no_transform:
        return (f"image {name} has a CRS but no geotransform (where its pixels lie is unknown): "
                "georeference it (e.g. gdal_edit.py -a_ullr ULX ULY LRX LRY, or gdalwarp with "
                "ground control points)")
    return None


def prj_beside(name: DatasetName) -> Path | None:
    """The ESRI ``.prj`` beside a local image (``scene.prj`` or ``scene.png.prj`` for
    ``scene.png``), which GDAL does not read for every format (PNG, JPEG with a world file):
    the CRS to assign is most likely in it."""
    path = local_path(name)
    if path is None:
        return None
    candidates = (path.with_suffix(".prj"), path.with_name(f"{path.name}.prj"))
    return next((c for c in candidates if c.is_file()), None)


def earth_problem(crs: CRS | None, name: DatasetName) -> str | None:
    """Why a scene in ``crs`` cannot be mapped onto the Earth, as one line that says what to
    do; None when it can. A local (engineering) CRS has no datum: its map has no longitudes
    for the inventory nor a footprint for the STAC Item."""
    if crs is None or crs.is_geographic or crs.is_projected:
        return None
    return (f"image {name} is in a local (engineering) CRS with no datum, which cannot be "
            "placed on the Earth (the inventory's longitudes, the STAC footprint): assign its "
            "real CRS (e.g. gdal_edit.py -a_srs EPSG:32647) or warp it onto one")


def _nodata_shadows_alpha(dataset: rasterio.DatasetReader) -> bool:
    """Whether rasterio warns on every masked read of ``dataset`` (a nodata value and a band
    GDAL takes for alpha: the nodata value decides the mask)."""
    return dataset.nodata is not None and ColorInterp.alpha in dataset.colorinterp


def _elevation_and_alpha(dataset: rasterio.DatasetReader) -> bool:
    """Whether a DEM is elevation and an alpha band (gdalwarp -dstalpha): its alpha is its
    nodata mask, not a second band to refuse."""
    return dataset.count == 2 and dataset.colorinterp[1] == ColorInterp.alpha


def _faint_alpha(dem: rasterio.DatasetReader | None, name: DatasetName | None) -> str | None:
    """The one-line error for an elevation + alpha DEM whose 16-bit alpha holds at most 255
    (0/255 written into a uint16 band): GDAL counts only the type's maximum (65535) as opaque,
    so 255 reads as almost transparent and the DEM as nodata. None for any other DEM. Looked
    at only once a read found no elevation: a shrunk read of the alpha decodes every block."""
    if dem is None or not _elevation_and_alpha(dem) or np.dtype(dem.dtypes[1]).itemsize != 2:
        return None
    shape = (min(dem.height, ALPHA_LOOK_PX), min(dem.width, ALPHA_LOOK_PX))
    highest = int(dem.read(2, out_shape=shape, resampling=Resampling.nearest).max())
    if not 0 < highest <= 255:
        return None
    opaque = np.iinfo(np.dtype(dem.dtypes[1])).max
    meant = 1 if highest == 1 else 255  # a 0/1 validity mask, or 8-bit alpha values
    return (f"DEM {name}'s alpha band ({dem.dtypes[1]}) holds at most {highest}, which GDAL reads "
            f"as almost transparent (a {dem.dtypes[1]} alpha is opaque at {opaque}), so the DEM "
            f"reads as nodata: rewrite its alpha as 0/{opaque}, or apply it with gdalwarp "
            f"-srcalpha -wo SRC_ALPHA_MAX={meant} -ot Float32 -dstnodata nan {name} out.tif")


def _core_slope(halo: np.ndarray, top: int, left: int, out_h: int, out_w: int,
                step: tuple[float, float], axes_cos: float) -> np.ndarray:
    """(1, out_h, out_w) slope of the window inside a halo read (Horn's stencil needs it)."""
    slope = slope_degrees(halo, step, axes_cos)[top:top + out_h, left:left + out_w]
    return np.where(np.isfinite(slope), slope, np.nan)[None].astype(np.float32)


def _area(bounds: tuple) -> float:
    """The area of an extent (west, south, east, north), in either row order."""
    return abs((bounds[2] - bounds[0]) * (bounds[3] - bounds[1]))


def _covered_fraction(a: tuple[float, float, float, float], b: tuple) -> float:
    """The share of extent ``b`` that extent ``a`` covers (0: apart, or sharing only an edge);
    either extent may run south-up."""
    (aw, ae), (as_, an) = sorted((a[0], a[2])), sorted((a[1], a[3]))
    (bw, be), (bs, bn) = sorted((b[0], b[2])), sorted((b[1], b[3]))
    width = max(0.0, min(ae, be) - max(aw, bw))
    height = max(0.0, min(an, bn) - max(as_, bs))
    area = (be - bw) * (bn - bs)
    return width * height / area if area > 0 else 0.0


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array`` locked against writes: a cached sample is shared by every check that asks."""
    array.setflags(write=False)
    return array
