"""Landslide inventory: one polygon per connected landslide region, built strip by strip.

Strips of the mask are labelled separately and their components joined across strip borders with
a union–find, so a slide spanning several strips comes out as one polygon while memory stays
bounded by one strip. Attributes are accumulated per component from the same strips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.features import shapes
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage

from slidemap.data.terrain import pixel_size_m
from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path, final_path

FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


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
                    simplify_m: float = 0.0, strip_rows: int = 1024) -> Inventory:
    """Polygonise landslide pixels (mask == 1) of ``mask_path`` with area and probability stats."""
    forest = UnionFind()
    parts: dict[int, list] = {}
    sums: dict[str, np.ndarray] = {k: np.zeros(1) for k in ("pixels", "area", "prob", "max")}
    next_id = 1
    previous_last_row: np.ndarray | None = None
    with rasterio.open(mask_path) as mask_ds, rasterio.open(prob_path) as prob_ds:
        crs = mask_ds.crs
        for top in range(0, mask_ds.height, strip_rows):
            window = Window(0, top, mask_ds.width, min(strip_rows, mask_ds.height - top))
            slide = mask_ds.read(1, window=window) == 1
            prob = prob_ds.read(1, window=window)
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
            sums[key] = np.concatenate([values, np.zeros(size - values.size)])


def _pixel_areas(ds: rasterio.DatasetReader, window: Window) -> np.ndarray:
    """Area in m² of the pixels of each row of ``window`` (varies with latitude if geographic)."""
    if ds.crs is None or not ds.crs.is_geographic:
        dx, dy = pixel_size_m(ds.crs, ds.res) if ds.crs else ds.res
        return np.full((int(window.height), 1), dx * dy)
    rows = np.arange(window.row_off, window.row_off + window.height) + 0.5
    lats = ds.transform.f + rows * ds.transform.e
    return np.array([np.prod(pixel_size_m(ds.crs, ds.res, lat)) for lat in lats])[:, None]


def _merge(forest: UnionFind, parts: dict[int, list], sums: dict[str, np.ndarray], crs: object,
           min_area_m2: float, simplify_m: float) -> Inventory:
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
            geometry = shapely.simplify(geometry, simplify_m, preserve_topology=True)
        geometries.append(geometry)
        rows.append((area, geometry.length, sum(sums["prob"][i] for i in labels) / pixels,
                     max(sums["max"][i] for i in labels), pixels))
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    attributes = {
        "id": np.arange(1, len(geometries) + 1, dtype=np.int32),
        "area_m2": table[:, 0],
        "perimeter_m": table[:, 1],
        "mean_prob": table[:, 2],
        "max_prob": table[:, 3],
        "pixels": table[:, 4].astype(np.int64),
    }
    return Inventory(geometries, attributes, crs)


def write_inventory(inventory: Inventory, path: Path) -> None:
    """Write a GeoPackage (.gpkg) or GeoJSON (.geojson) layer atomically."""
    driver = "GeoJSON" if path.suffix.lower() in {".geojson", ".json"} else "GPKG"
    geometry = np.array([shapely.to_wkb(g) for g in inventory.geometries], dtype=object)
    names = list(inventory.attributes)
    try:
        with atomic_path(path) as tmp:
            pyogrio.raw.write(
                tmp, geometry, [inventory.attributes[n] for n in names], names, driver=driver,
                geometry_type="MultiPolygon", promote_to_multi=True,
                crs=inventory.crs.to_wkt() if inventory.crs else None, layer="landslides",
            )
    except (OSError, DataSourceError, DataLayerError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        target = final_path(path)
        raise SlidemapError(f"cannot write {target} ({lines[0]}): check free disk space and "
                            f"that {target.parent} is writable") from exc
