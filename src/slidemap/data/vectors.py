"""Labels drawn as polygons: rasterised onto the image grid, one window at a time.

Analysts label in QGIS as polygons (GeoPackage, GeoJSON, Shapefile, in any CRS). A window's
labels are the polygons whose bounding boxes meet it, read with a bounding-box filter (the
file's spatial index where it has one), reprojected to the image CRS and burnt at the centres of
the window's pixels; so memory follows the window, never the scene or the number of landslides.

What counts as labelled: inside the area-of-interest polygons (``aoi``, the extent that was
looked at) every pixel is 1 in a landslide polygon and 0 elsewhere; outside them 255 (ignore).
Without an AOI the whole image is taken as looked at: every valid image pixel outside the
polygons is background, so the polygons must be complete over the scene. An AOI also restricts
a label raster the same way.

A GeoPackage with several layers is read as ``FILE.gpkg|layername=NAME`` (the QGIS spelling);
with one layer, the path alone does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform, transform_bounds

from slidemap.data.terrain import bounds_in, crs_name
from slidemap.errors import SlidemapError, SlidemapWarning, first_line, silenced
from slidemap.schema.values import LAYER_MARK

POLYGONAL = {"Polygon", "MultiPolygon"}
MAX_LON = 360  # longitudes past the antimeridian (0 to 360) are still longitudes
DENSIFY = 21  # points per edge when a window's bounds are taken into the layer's CRS
# M (measure) values mean nothing to labels; pyogrio drops them with this warning on every read
MEASURED = r"Measured \(M\) geometry types are not supported"


class PolygonLayer:
    """One polygon layer, read window by window in the CRS of the image grid it serves."""

    def __init__(self, path: str | Path, role: str, crs: CRS) -> None:
        self.name = str(path)
        self.role = role
        file, _, layer = self.name.partition(LAYER_MARK)
        self.path = Path(file)
        self.crs = crs
        if not self.path.exists():
            raise SlidemapError(f"{role} {self.path} does not exist: check the path")
        try:
            with silenced(UserWarning, MEASURED):
                # geometry layers only: a GeoPackage may hold tables, e.g. the layer_styles
                # that QGIS and slidemap predict store beside the polygons
                layers = [row for row in pyogrio.list_layers(self.path) if row[1] is not None]
            if not layer and len(layers) != 1:
                names = ", ".join(str(row[0]) for row in layers) or "none"
                raise SlidemapError(f"{role} {self.path} has {len(layers)} geometry layers "
                                    f"({names}): name one as {self.path}{LAYER_MARK}NAME")
            self.layer = layer or str(layers[0][0])
            with silenced(UserWarning, MEASURED):
                info = pyogrio.read_info(self.path, layer=self.layer, force_total_bounds=True)
        except (DataSourceError, DataLayerError) as exc:
            raise SlidemapError(f"{role} {self.name} cannot be read as a vector layer "
                                f"({first_line(exc)}): is it a complete GeoPackage, GeoJSON "
                                "or Shapefile?") from exc
        if info["crs"] is None:
            raise SlidemapError(f"{role} {self.name} has no CRS: assign one in QGIS (Layer "
                                "properties > Source) or with ogr2ogr -a_srs")
        try:
            self.layer_crs = CRS.from_user_input(info["crs"])
        except CRSError as exc:
            raise SlidemapError(f"{role} {self.name} has a CRS GDAL does not know "
                                f"({info['crs']}): reproject it to a known CRS") from exc
        kind = str(info["geometry_type"]).removesuffix(" Z").removesuffix(" M")
        if kind not in POLYGONAL and kind != "Unknown" and info["features"]:
            raise SlidemapError(f"{role} {self.name} holds {kind} features: labels and areas of "
                                "interest must be polygons")
        # no extent: every feature lacks a geometry (e.g. a row added to QGIS's attribute table
        # and never drawn), so the layer holds no polygon however many rows it has
        extent = info["total_bounds"]
        self.features = int(info["features"]) if extent is not None else 0
        if self.features:
            self._check_lon_lat(np.asarray(extent, dtype=float))
        self.bounds = self._in_image_crs(np.asarray(extent)) if self.features else None

    def _check_lon_lat(self, bounds: np.ndarray) -> None:
        """Refuse a layer in a geographic CRS whose coordinates are no longitudes and latitudes:
        most often projected coordinates in a file without a CRS (a GeoJSON without its crs
        member, which GDAL reads as WGS 84), which only failed as "does not overlap"."""
        west, south, east, north = bounds
        if not self.layer_crs.is_geographic or (
                -MAX_LON <= west <= east <= MAX_LON and -90 <= south <= north <= 90):
            return
        raise SlidemapError(
            f"{self.role} {self.name} is in {crs_name(self.layer_crs)} but its coordinates (x "
            f"{west:.1f} to {east:.1f}, y {south:.1f} to {north:.1f}) are no longitudes and "
            "latitudes: likely projected coordinates in a file without a CRS (GeoJSON, RFC "
            "7946, is always lon/lat); save them with their real CRS, e.g. ogr2ogr -a_srs "
            f"EPSG:32647 {self.path.stem}.gpkg {self.path}")

    def _in_image_crs(self, bounds: np.ndarray) -> tuple[float, float, float, float] | None:
        if not np.isfinite(bounds).all():
            return None
        if self.layer_crs == self.crs:
            west, south, east, north = (float(b) for b in bounds)
            return west, south, east, north
        moved = bounds_in(self.layer_crs, self.crs, bounds)
        if moved is None:
            raise SlidemapError(
                f"{self.role} {self.name} is in {crs_name(self.layer_crs)}, which cannot be "
                f"reprojected to the image's CRS {crs_name(self.crs)}: save the polygons in the "
                "image's CRS, or assign the image its real CRS (e.g. gdal_edit.py -a_srs "
                "EPSG:32647)")
        return moved

    def check_overlap(self, image_bounds: tuple[float, float, float, float]) -> None:
        """Refuse polygons that lie off the image (``image_bounds`` in its CRS): most often a
        layer whose CRS is set wrong, which would otherwise label nothing without a word."""
        if self.bounds is not None and _disjoint(self.bounds, image_bounds):
            raise SlidemapError(f"{self.role} {self.name} does not overlap the image (after "
                                "reprojection to its CRS): pass polygons of the same ground, "
                                "with their CRS set right")

    def geometries(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Polygons whose bounding boxes meet ``bounds`` (image CRS), in the image CRS."""
        if not self.features:
            return np.empty(0, dtype=object)
        box = bounds if self.layer_crs == self.crs else transform_bounds(
            self.crs, self.layer_crs, *bounds, densify_pts=DENSIFY)
        try:
            with silenced(UserWarning, MEASURED):
                _, _, wkb, _ = pyogrio.raw.read(self.path, layer=self.layer, bbox=box,
                                                columns=[])
        except (DataSourceError, DataLayerError) as exc:
            raise SlidemapError(f"{self.role} {self.name} cannot be read "
                                f"({first_line(exc)}): is it complete?") from exc
        # a GeoJSON ring left unclosed (GDAL reads it, with a warning) is closed, and a ring of
        # fewer than 3 points, which has no area, read as missing: GEOS refused both with a
        # traceback, where QGIS draws the first and skips the second
        geometries = shapely.from_wkb(wkb, on_invalid="fix")
        geometries = geometries[~(shapely.is_missing(geometries) | shapely.is_empty(geometries))]
        kinds = shapely.get_type_id(geometries)
        polygonal = np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
        if not polygonal.all():
            kind = shapely.get_type_id(geometries[~polygonal][0])
            raise SlidemapError(f"{self.role} {self.name} holds a feature of geometry type "
                                f"{shapely.GeometryType(kind).name}: labels and areas of "
                                "interest must be polygons")
        if self.layer_crs != self.crs and geometries.size:
            geometries = shapely.transform(geometries, self._to_image_crs)
        return geometries

    def _to_image_crs(self, xy: np.ndarray) -> np.ndarray:
        xs, ys = transform(self.layer_crs, self.crs, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    def area_within(self, region: shapely.Geometry) -> float:
        """The area (image CRS units²) that the layer's polygons cover inside ``region`` (a
        geometry in the image CRS). The one measure of labelled ground in a box, for newsite's
        check and suggest's skip alike: their callers count it only above a pixel's area, as a
        polygon beside the box saved in another CRS leaves a sliver of float error inside."""
        if region.is_empty:
            return 0.0
        west, south, east, north = region.bounds
        geometries = self.geometries((west, south, east, north))
        if not geometries.size:
            return 0.0
        return float(shapely.intersection(_union(geometries), region).area)

    def burn(self, grid: Affine, shape: tuple[int, int]) -> np.ndarray:
        """(h, w) bool: pixel centres of the grid ``grid`` × ``shape`` inside a polygon."""
        height, width = shape
        west, north = grid @ (0, 0)
        east, south = grid @ (width, height)
        bounds = (min(west, east), min(south, north), max(west, east), max(south, north))
        geometries = self.geometries(bounds)
        if not geometries.size:
            return np.zeros(shape, dtype=bool)
        return rasterize(((g, 1) for g in geometries), out_shape=shape, transform=grid, fill=0,
                         dtype="uint8").astype(bool)


class VectorLabels:
    """Labels of an image grid from landslide polygons (or a label raster's values) and an
    optional area of interest: 1 landslide, 0 background inside the AOI, 255 outside it."""

    def __init__(self, crs: CRS, image_bounds: tuple[float, float, float, float],
                 polygons: str | Path | None = None, aoi: str | Path | None = None) -> None:
        self.polygons = None if polygons is None else PolygonLayer(polygons, "label file", crs)
        self.aoi = None if aoi is None else PolygonLayer(aoi, "area of interest", crs)
        for layer in (self.polygons, self.aoi):
            if layer is not None:
                layer.check_overlap(image_bounds)
        if self.aoi is not None and not self.aoi.features:
            raise SlidemapError(f"area of interest {self.aoi.name} has no polygon: draw the "
                                "extent that was labelled")
        if self.polygons is not None and not self.polygons.features:
            where = "inside the area of interest" if self.aoi is not None else "of the image"
            warnings.warn(f"label file {self.polygons.name} holds no polygon: every pixel "
                          f"{where} is taken as background", SlidemapWarning, stacklevel=2)

    def read(self, grid: Affine, shape: tuple[int, int],
             labels: np.ndarray | None = None) -> np.ndarray:
        """(h, w) uint8 labels of a window whose pixel grid is ``grid`` × ``shape``.

        ``labels`` (a label raster's window) replaces the polygons; the AOI applies to both.
        """
        if labels is None:
            assert self.polygons is not None
            labels = self.polygons.burn(grid, shape).astype(np.uint8)
        if self.aoi is not None:
            labels = np.where(self.aoi.burn(grid, shape), labels, 255).astype(np.uint8)
        return labels

    def labels_landslides(self, bounds: tuple[float, float, float, float], block: float,
                          pixel_area: float) -> bool:
        """Whether landslide polygons cover more than ``pixel_area`` (a pixel's area) inside
        ``bounds`` (image CRS) and the AOI: without, training learns that the scene has no
        landslides; less is no pixel, only the float sliver that a polygon beside the image
        leaves when saved in another CRS. Looked for block by block (``block`` CRS units a
        side), so memory follows a block, not the layer."""
        if self.polygons is None or not self.polygons.features:
            return False
        return covers(self.polygons, self.aoi, bounds, block, pixel_area)


def covers(layer: PolygonLayer, within: PolygonLayer | None,
           bounds: tuple[float, float, float, float], block: float, pixel_area: float) -> bool:
    """Whether ``layer``'s polygons cover more than ``pixel_area`` inside ``bounds`` (image CRS)
    and ``within``'s polygons (if given), looked for block by block (``block`` CRS units a
    side), so that memory follows a block, not the layers."""
    west, east = sorted((bounds[0], bounds[2]))
    south, north = sorted((bounds[1], bounds[3]))
    for x in np.arange(west, east, block):
        for y in np.arange(south, north, block):
            region: shapely.Geometry = shapely.box(x, y, min(x + block, east),
                                                   min(y + block, north))
            if within is not None:
                region = shapely.intersection(_union(within.geometries(region.bounds)), region)
            if layer.area_within(region) > pixel_area:
                return True
    return False


def _union(geometries: np.ndarray) -> shapely.Geometry:
    """The ground ``geometries`` cover as :meth:`PolygonLayer.burn` burns them: each polygon
    (each part of a MultiPolygon) repaired on its own, as a self-intersecting ring drawn in
    QGIS would fail the overlay, then their union. make_valid of a MultiPolygon whose parts
    overlap keeps only what one part covers, where the burn fills the overlap too."""
    return shapely.union_all(shapely.make_valid(shapely.get_parts(geometries)))


def _disjoint(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
