"""Landslide inventory: one polygon per connected landslide region, built strip by strip.

Strips of the mask are labelled separately and their components joined across strip borders with
a union–find, so a slide spanning several strips comes out as one polygon while memory stays
bounded by one strip. Attributes are accumulated per component from the same strips: area,
probability and, given a DEM, mean slope and elevation range (the DEM read on the mask's grid at
native resolution, warped on the fly if it lies on another grid). Lengths are in metres also for
geographic CRSs (spherical earth, as for the pixel areas).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.warp import transform
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage

from slidemap.data.scene import Scene
from slidemap.data.terrain import EARTH_RADIUS_M, pixel_size_m
from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path, final_path
from slidemap.io.rasters import gdal_cache, read_probability
from slidemap.io.styles import store_style

FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
STRIP_PIXELS = 2**22  # mask pixels labelled at a time: memory bounded on wide scenes too
TERRAIN_PIXELS = 2**20  # DEM pixels at a time (slope works in float64 with many temporaries)
CACHE_MB = 64  # GDAL block cache: every block is read once, in order
START = {"elev_min": np.inf, "elev_max": -np.inf}  # accumulators that do not start at 0
INVENTORY_FORMATS = {"gpkg": ".gpkg", "geojson": ".geojson"}
WGS84 = CRS.from_epsg(4326)
LAYER = "landslides"
MIN_AREA_WORKING_PIXELS = 4  # default --min-area: smaller specks are below what the model sees
SIMPLIFY_WORKING_PIXELS = 0.5  # default --simplify: removes the native-pixel staircase


class UnionFind:
    """Disjoint sets over integer ids 1..n, grown on demand."""

    def __init__(self) -> None:
        self.parent = np.zeros(1, dtype=np.int64)

    def grow(self, size: int) -> None:
        if size > self.parent.size:
            self.parent = np.concatenate([self.parent, np.arange(self.parent.size, size)])

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Inventory:
    """Landslide polygons with their attributes, in the mask's CRS."""

    geometries: list
    attributes: dict[str, np.ndarray]
    crs: object

    def __len__(self) -> int:
        return len(self.geometries)


def build_inventory(mask_path: Path, prob_path: Path, min_area_m2: float = 0.0,
                    simplify_m: float = 0.0, strip_rows: int | None = None,
                    dem: Path | None = None) -> Inventory:
    """Polygonise landslide pixels (mask == 1) of ``mask_path`` with area and probability stats,
    and terrain stats (``mean_slope_deg``, ``elev_range_m``) when ``dem`` is given. Strips are
    ``strip_rows`` high (default: about 4 Mpx whatever the width, 64 to 1024 rows)."""
    forest = UnionFind()
    parts: dict[int, list] = {}
    keys = ["pixels", "area", "prob", "max"]
    keys += ["slope_sum", "slope_n", "elev_min", "elev_max"] if dem is not None else []
    sums: dict[str, np.ndarray] = {k: np.full(1, START.get(k, 0.0)) for k in keys}
    next_id = 1
    previous_last_row: np.ndarray | None = None
    with gdal_cache(CACHE_MB), rasterio.open(mask_path) as mask_ds, \
            rasterio.open(prob_path) as prob_ds, \
            (Scene(mask_path, dem=dem) if dem is not None else contextlib.nullcontext()) as terrain:
        crs = mask_ds.crs
        strip_rows = strip_rows or int(np.clip(STRIP_PIXELS // mask_ds.width, 64, 1024))
        for top in range(0, mask_ds.height, strip_rows):
            window = Window(0, top, mask_ds.width, min(strip_rows, mask_ds.height - top))
            slide = mask_ds.read(1, window=window) == 1
            prob = read_probability(prob_ds, window)
            labels, count = ndimage.label(slide, structure=FOUR_CONNECTED)
            labels = np.where(labels > 0, labels + (next_id - 1), 0).astype(np.int64)
            forest.grow(next_id + count)
            _grow(sums, next_id + count)
            if previous_last_row is not None:
                touching = (previous_last_row > 0) & (labels[0] > 0)
                for a, b in set(zip(previous_last_row[touching], labels[0][touching],
                                    strict=True)):
                    forest.union(int(a), int(b))
            areas = _pixel_areas(mask_ds, window)
            ids = labels[slide]
            sums["pixels"] += np.bincount(ids, minlength=sums["pixels"].size)
            sums["area"] += np.bincount(ids, weights=np.broadcast_to(areas, slide.shape)[slide],
                                        minlength=sums["area"].size)
            sums["prob"] += np.bincount(ids, weights=prob[slide], minlength=sums["prob"].size)
            np.maximum.at(sums["max"], ids, prob[slide])
            if terrain is not None and count:
                _add_terrain(terrain, window, labels, slide, sums)
            strip_transform = window_transform(window, mask_ds.transform)
            for geometry, value in shapes(labels.astype(np.int32), mask=slide,
                                          transform=strip_transform, connectivity=4):
                parts.setdefault(int(value), []).append(shapely.geometry.shape(geometry))
            previous_last_row = labels[-1]
            next_id += count
    return _merge(forest, parts, sums, crs, min_area_m2, simplify_m)


def _grow(sums: dict[str, np.ndarray], size: int) -> None:
    for key, values in sums.items():
        if values.size < size:
            sums[key] = np.concatenate([values, np.full(size - values.size, START.get(key, 0.0))])


def _add_terrain(scene: Scene, window: Window, labels: np.ndarray, slide: np.ndarray,
                 sums: dict[str, np.ndarray]) -> None:
    """Slope and elevation of a strip's landslide pixels, folded into their components."""
    step = max(1, TERRAIN_PIXELS // slide.shape[1])
    for top in range(0, slide.shape[0], step):
        rows = slice(top, top + step)
        if not slide[rows].any():
            continue
        here = slide[rows]
        elevation, slope = scene.terrain(Window(window.col_off, window.row_off + top,
                                                window.width, here.shape[0]))
        ids, elevation, slope = labels[rows][here], elevation[here], slope[here]
        finite = np.isfinite(slope)
        size = sums["slope_n"].size
        sums["slope_sum"] += np.bincount(ids[finite], weights=slope[finite], minlength=size)
        sums["slope_n"] += np.bincount(ids[finite], minlength=size)
        np.fmin.at(sums["elev_min"], ids, elevation)  # fmin/fmax skip NaN (no DEM data)
        np.fmax.at(sums["elev_max"], ids, elevation)


def _pixel_areas(ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
    """Area in m² of the pixels of each row of ``window`` (varies with latitude if geographic)."""
    if ds.crs is None or not ds.crs.is_geographic:
        dx, dy = pixel_size_m(ds.crs, ds.res) if ds.crs else ds.res
        return np.full((int(window.height), 1), dx * dy)
    rows = np.arange(window.row_off, window.row_off + window.height) + 0.5
    lats = ds.transform.f + rows * ds.transform.e
    return np.array([np.prod(pixel_size_m(ds.crs, ds.res, lat)) for lat in lats])[:, None]


def _merge(forest: UnionFind, parts: dict[int, list], sums: dict[str, np.ndarray],
           crs: CRS | None, min_area_m2: float, simplify_m: float) -> Inventory:
    groups: dict[int, list[int]] = {}
    for label in parts:
        groups.setdefault(forest.find(label), []).append(label)
    geometries, rows = [], []
    for _root, labels in sorted(groups.items()):
        pixels = sum(sums["pixels"][i] for i in labels)
        area = sum(sums["area"][i] for i in labels)
        if area < min_area_m2:
            continue
        geometry = shapely.union_all([g for i in labels for g in parts[i]])
        if simplify_m > 0:
            geometry = shapely.simplify(geometry, _crs_units(simplify_m, crs),
                                        preserve_topology=True)
        geometries.append(geometry)
        row = [area, _length_m(geometry, crs), sum(sums["prob"][i] for i in labels) / pixels,
               max(sums["max"][i] for i in labels), pixels]
        if "slope_n" in sums:
            slopes = sum(sums["slope_n"][i] for i in labels)
            low, high = min(sums["elev_min"][i] for i in labels), max(
                sums["elev_max"][i] for i in labels)
            row += [sum(sums["slope_sum"][i] for i in labels) / slopes if slopes else np.nan,
                    high - low if np.isfinite(low) else np.nan]
        rows.append(row)
    width = 7 if "slope_n" in sums else 5
    table = np.array(rows, dtype=np.float64).reshape(-1, width)
    lon, lat = _centroids_lonlat(geometries, crs)
    attributes = {  # the feature id (fid) numbers the slides; no second id column
        "area_m2": table[:, 0],
        "perimeter_m": table[:, 1],
        "mean_prob": table[:, 2],
        "max_prob": table[:, 3],
        "pixels": table[:, 4].astype(np.int64),
        "centroid_lon": lon,
        "centroid_lat": lat,
    }
    if width == 7:
        attributes["mean_slope_deg"] = table[:, 5]
        attributes["elev_range_m"] = table[:, 6]
    return Inventory(geometries, attributes, crs)


def _centroids_lonlat(geometries: list, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (WGS 84, degrees) of each polygon's centroid; NaN without a CRS."""
    if not geometries or crs is None:
        nan = np.full(len(geometries), np.nan)
        return nan, nan.copy()
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(geometries, dtype=object)))
    lon, lat = transform(crs, WGS84, xy[:, 0].tolist(), xy[:, 1].tolist())
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def _metres_per_unit(crs: CRS | None) -> float:
    """Metres per CRS unit; for degrees, per degree of latitude (spherical earth)."""
    if crs is None:
        return 1.0
    if crs.is_geographic:
        return math.pi * EARTH_RADIUS_M / 180.0
    return crs.linear_units_factor[1] if crs.is_projected else 1.0


def _crs_units(metres: float, crs: CRS | None) -> float:
    return metres / _metres_per_unit(crs)


def _length_m(geometry: shapely.Geometry, crs: CRS | None) -> float:
    """Boundary length in metres; in degrees, each segment is scaled at its mean latitude."""
    if crs is None or not crs.is_geographic:
        return float(geometry.length) * _metres_per_unit(crs)
    total = 0.0
    for ring in shapely.get_rings(shapely.get_parts(geometry)):
        lon, lat = np.radians(shapely.get_coordinates(ring)).T
        dx = np.diff(lon) * np.cos((lat[1:] + lat[:-1]) / 2)
        total += float(np.hypot(dx, np.diff(lat)).sum()) * EARTH_RADIUS_M
    return total


def inventory_paths(out_dir: Path, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    """``inventory``: the file of the first format asked; ``inventory_<format>``: the others."""
    unknown = [f for f in formats if f not in INVENTORY_FORMATS]
    if unknown:
        raise SlidemapError(f"inventory format {unknown[0]!r} is not known: use "
                            f"{' or '.join(INVENTORY_FORMATS)} (repeat --format for both)")
    paths = {}
    for index, name in enumerate(dict.fromkeys(formats)):
        key = "inventory" if index == 0 else f"inventory_{name}"
        paths[key] = out_dir / f"{stem}_landslides{INVENTORY_FORMATS[name]}"
    return paths


def inventory_defaults(working_pixel_m: float) -> tuple[float, float]:
    """(min area m², simplification m) at a model's working resolution: polygons under a few
    working pixels are specks the model cannot resolve, and outlines are simplified by half a
    working pixel, which removes the staircase of native pixels and no shape the model saw."""
    return (MIN_AREA_WORKING_PIXELS * working_pixel_m ** 2,
            SIMPLIFY_WORKING_PIXELS * working_pixel_m)


def write_inventory(inventory: Inventory, path: Path,
                    metadata: dict[str, str] | None = None) -> None:
    """Write a GeoPackage (.gpkg, with its QGIS style stored inside and ``metadata`` on the
    layer) or GeoJSON (.geojson) layer atomically."""
    driver = "GeoJSON" if path.suffix.lower() in {".geojson", ".json"} else "GPKG"
    geometry = np.array([shapely.to_wkb(g) for g in inventory.geometries], dtype=object)
    names = list(inventory.attributes)
    try:
        with atomic_path(path) as tmp:
            pyogrio.raw.write(
                tmp, geometry, [inventory.attributes[n] for n in names], names, driver=driver,
                geometry_type="MultiPolygon", promote_to_multi=True,
                crs=inventory.crs.to_wkt() if inventory.crs else None, layer=LAYER,
                layer_metadata=metadata if driver == "GPKG" and metadata else None,
            )
            if driver == "GPKG":
                store_style(tmp, LAYER, "slidemap landslide inventory")
    except (OSError, sqlite3.Error, DataSourceError, DataLayerError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        target = final_path(path)
        raise SlidemapError(f"cannot write {target} ({lines[0]}): check free disk space and "
                            f"that {target.parent} is writable") from exc
