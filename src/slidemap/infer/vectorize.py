"""Landslide inventory: one polygon per connected landslide region, built strip by strip.

Strips of the mask are labelled separately and their components joined across strip borders with
a union–find, so a slide spanning several strips comes out as one polygon. A slide is finished,
and written out, as soon as a strip no longer touches it: memory holds one strip and the slides
still open, whatever the number of slides. Attributes are accumulated per component from the
same strips: area, probability and, given a DEM, mean slope and elevation range (the DEM read on
the mask's grid at native resolution, warped on the fly if it lies on another grid). Areas and
lengths are ground metres as ``slidemap.data.terrain.ground_scales`` measures a CRS unit: degrees
on the WGS 84 ellipsoid, a projection's unit where it is within 1 % of a ground metre (UTM), and
the local scale where it is not (Web Mercator: pixel areas row by row, lengths at each polygon's
centroid). Areas are summed in whole units (a pixel where its area is the same over the grid,
a power of two of m² where it varies by row), exactly, so they are the same to the bit wherever
the strips are cut. Strips are polygonised in pixel coordinates, which are whole numbers and so
exact, and a slide's pieces are joined there before its outline is put on the map grid: a strip
border computed from two strips' map origins differs in the last bit on grids whose steps are
not exact in binary, and the joined pieces would stay parts a hair apart.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
import shapely.affinity
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from rasterio.warp import transform
from rasterio.windows import Window
from scipy import ndimage
from shapely.errors import GEOSException

from slidemap.data.names import DatasetName
from slidemap.data.scene import Scene
from slidemap.data.terrain import ground_scales
from slidemap.errors import SlidemapError, UsageError, first_line
from slidemap.infer.budget import MemoryBudget, release_free_memory
from slidemap.io.atomic import atomic_path, final_path
from slidemap.io.rasters import gdal_cache, read_probability
from slidemap.io.styles import store_style

FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
STRIP_PIXELS = 2**22  # mask pixels labelled at a time, at most
STRIP_BYTES_PER_PIXEL = 48  # a strip's arrays: mask, probability, labels and their temporaries
TERRAIN_BLOCK = 256  # side of the blocks whose DEM and slope are read for the landslides in them
CACHE_MB = 64  # GDAL block cache: every block is read once, in order
KEYS = ("pixels", "area", "prob", "max")
TERRAIN_KEYS = ("slope_sum", "slope_n", "elev_min", "elev_max")
START = {"elev_min": np.inf, "elev_max": -np.inf}  # accumulators that do not start at 0
INVENTORY_FORMATS = {"gpkg": ".gpkg", "geojson": ".geojson"}
WGS84 = CRS.from_epsg(4326)
LAYER = "landslides"
MIN_AREA_WORKING_PIXELS = 4  # default --min-area: smaller specks are below what the model sees
SIMPLIFY_WORKING_PIXELS = 0.5  # default --simplify: removes the native-pixel staircase
WRITE_BATCH = 1024  # landslides written to the GeoPackage at a time
WAITING_MAX = 4096  # finished landslides held back to keep the order of first appearance
AREA_BITS = 26  # bits of a row's pixel area where it varies: sums exact up to 2**27 px a slide
PROB_BITS = 26  # a probability is summed in whole 2**-26: exact up to 2**27 px a slide
SLOPE_BITS = 19  # a slope in whole 2**-19 degrees: 90° is under 2**26 of them


class UnionFind:
    """Disjoint sets over integer ids 0..n-1."""

    def __init__(self, size: int) -> None:
        self.parent = np.arange(size)

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
class Piece:
    """One connected region of one strip: its outline (in pixel coordinates of the mask) and
    accumulators."""

    label: int  # numbered strip by strip in the labelling's (raster) order: orders the output
    order: int  # numbered in the order polygonising meets them: the order of sums and unions
    geometries: list
    sums: np.ndarray  # one value per key (KEYS, then TERRAIN_KEYS with a DEM)


@dataclass
class Slide:
    """A landslide's pieces so far (by ``order``); ``root``, its first piece's ``label``, orders
    the output."""

    root: int
    pieces: list[Piece]


@dataclass
class Inventory:
    """Landslide polygons with their attributes, in the mask's CRS."""

    geometries: list
    attributes: dict[str, np.ndarray]
    crs: CRS | None

    def __len__(self) -> int:
        return len(self.geometries)


def strip_rows_for(width: int, budget: MemoryBudget) -> int:
    """Rows of a strip: about ``STRIP_PIXELS`` (fewer if the budget is small) whatever the
    width, 64 to 1024 rows unless the scene is too wide for 64."""
    pixels = min(STRIP_PIXELS, budget.share(0.5) // STRIP_BYTES_PER_PIXEL)
    rows = int(np.clip(pixels // width, 64, 1024))
    return rows if rows * width <= 2 * pixels else max(1, pixels // width)


def slide_batches(mask_path: Path, prob_path: Path, min_area_m2: float = 0.0,
                  simplify_m: float = 0.0, strip_rows: int | None = None,
                  dem: DatasetName | None = None, budget: MemoryBudget | None = None
                  ) -> Iterator[Inventory]:
    """Polygonise landslide pixels (mask == 1) of ``mask_path`` with area and probability stats,
    and terrain stats (``mean_slope_deg``, ``elev_range_m``) when ``dem`` is given, as batches
    of finished landslides (a landslide is finished once a strip no longer touches it).

    Strips are ``strip_rows`` high (default: from the budget, about 4 Mpx whatever the width).
    Landslides come out in the order of their first pixel (top to bottom; the files' fids
    number them from 1), unless more than ``WAITING_MAX`` finished ones wait behind one still
    open: then in the order they finish, so that memory stays bounded whatever the number of
    landslides.
    """
    budget = budget or MemoryBudget()
    keys = KEYS + (TERRAIN_KEYS if dem is not None else ())
    start = np.array([START.get(k, 0.0) for k in keys])
    open_slides: dict[int, Slide] = {}  # by the label they have in the last row read
    waiting: list[tuple[int, Slide]] = []  # finished, by root (heap; roots are unique)
    next_label, next_order = 0, 0
    previous_last_row: np.ndarray | None = None
    with gdal_cache(CACHE_MB), rasterio.open(mask_path) as mask_ds, \
            rasterio.open(prob_path) as prob_ds, \
            _terrain(mask_path, dem) as terrain:
        strip_rows = strip_rows or strip_rows_for(mask_ds.width, budget)
        row_units, unit_m2 = _area_units(mask_ds)
        for top in range(0, mask_ds.height, strip_rows):
            window = Window(0, top, mask_ds.width, min(strip_rows, mask_ds.height - top))
            slide = mask_ds.read(1, window=window) == 1
            labels, count = ndimage.label(slide, structure=FOUR_CONNECTED)
            sums = _strip_sums(row_units[top:top + labels.shape[0]], prob_ds, terrain, window,
                               labels, slide, count, keys, start)
            pieces: dict[int, Piece] = {}
            for geometry, value in shapes(labels.astype(np.int32), mask=slide,
                                          transform=Affine.translation(0, top),
                                          connectivity=4):
                label = int(value)
                if label not in pieces:
                    pieces[label] = Piece(next_label + label, next_order, [], sums[label])
                    next_order += 1
                pieces[label].geometries.append(shapely.geometry.shape(geometry))
            joined = _join(open_slides, previous_last_row, labels, pieces)
            last = top + strip_rows >= mask_ds.height  # no strip follows: none stays open
            continuing = set() if last else set(np.unique(labels[-1][labels[-1] > 0]).tolist())
            open_slides = {}
            for members, landslide in joined:
                if members & continuing:
                    for label in members & continuing:
                        open_slides[label] = landslide
                else:
                    heapq.heappush(waiting, (landslide.root, landslide))
            previous_last_row = labels[-1].copy()
            next_label += count
            del labels, slide, sums
            release_free_memory()
            first_open = min((s.root for s in open_slides.values()), default=None)
            ready: list[Slide] = []
            while waiting and (first_open is None or waiting[0][0] < first_open
                               or len(waiting) > WAITING_MAX):
                ready.append(heapq.heappop(waiting)[1])
            if ready or last:  # the last batch, maybe empty: there is always one
                yield _finish(ready, keys, mask_ds, unit_m2, min_area_m2, simplify_m)


def _terrain(mask_path: Path, dem: DatasetName | None
             ) -> contextlib.AbstractContextManager[Scene | None]:
    """The DEM on the mask's grid, if there is one. The mask is a prediction on its image's
    grid, whose DEM coverage the prediction warned about (naming the image, not the mask's
    temporary name)."""
    if dem is None:
        return contextlib.nullcontext()
    return Scene(mask_path, dem=dem, warn_dem=False)


def _strip_sums(row_units: np.ndarray, prob_ds: rasterio.DatasetReader,
                terrain: Scene | None, window: Window, labels: np.ndarray, slide: np.ndarray,
                count: int, keys: tuple[str, ...], start: np.ndarray) -> np.ndarray:
    """(count + 1, keys) accumulators of the strip's labels (row 0: background); the area in
    the whole units ``row_units`` gives each of the strip's rows."""
    sums = {k: np.full(count + 1, start[i]) for i, k in enumerate(keys)}
    prob = read_probability(prob_ds, window)
    ids = labels[slide]
    sums["pixels"] += np.bincount(ids, minlength=count + 1)
    sums["area"] += np.bincount(ids, weights=np.broadcast_to(row_units[:, None],
                                                             slide.shape)[slide],
                                minlength=count + 1)
    sums["prob"] += np.bincount(ids, weights=_units(prob[slide], PROB_BITS), minlength=count + 1)
    if count:  # every label 1..count has pixels; ndimage's C loop, not ufunc.at's
        sums["max"][1:] = np.maximum(sums["max"][1:], ndimage.maximum(
            prob[slide], ids, index=np.arange(1, count + 1)))
    if terrain is not None and count:
        _add_terrain(terrain, window, labels, slide, sums)
    return np.stack([sums[k] for k in keys], axis=1)


def _join(open_slides: dict[int, Slide], previous_last_row: np.ndarray | None,
          labels: np.ndarray, pieces: dict[int, Piece]) -> list[tuple[set[int], Slide]]:
    """The strip's pieces joined with each other through the landslides open above them:
    (the strip's labels, the landslide) for each, open landslides no piece continues included
    (with no label)."""
    above = list({id(s): s for s in open_slides.values()}.values())
    index = {id(s): i for i, s in enumerate(above)}
    labels_order = sorted(pieces)
    node = {label: len(above) + i for i, label in enumerate(labels_order)}
    forest = UnionFind(len(above) + len(labels_order))
    if previous_last_row is not None:
        touching = (previous_last_row > 0) & (labels[0] > 0)
        for a, b in set(zip(previous_last_row[touching].tolist(), labels[0][touching].tolist(),
                            strict=True)):
            forest.union(index[id(open_slides[a])], node[b])
    groups: dict[int, tuple[set[int], list[Slide], list[Piece]]] = {}
    for landslide in above:
        groups.setdefault(forest.find(index[id(landslide)]), (set(), [], []))[1].append(
            landslide)
    for label in labels_order:
        group = groups.setdefault(forest.find(node[label]), (set(), [], []))
        group[0].add(label)
        group[2].append(pieces[label])
    joined = []
    for members, slides, new in groups.values():
        merged = [p for s in slides for p in s.pieces] + new
        merged.sort(key=lambda p: p.order)
        joined.append((members, Slide(min(p.label for p in merged), merged)))
    return joined


def _finish(slides: list[Slide], keys: tuple[str, ...], mask_ds: rasterio.DatasetReader,
            unit_m2: float, min_area_m2: float, simplify_m: float) -> Inventory:
    """Finished landslides as polygons on the grid of ``mask_ds`` (``unit_m2``: m² of an area
    unit) with their attributes (those below ``min_area_m2`` dropped); the files they are
    written to number them (fid). Pieces are joined in pixel coordinates, where strip borders
    match exactly."""
    crs, to_map = mask_ds.crs, mask_ds.transform
    column = {k: i for i, k in enumerate(keys)}

    def total(landslide: Slide, key: str) -> float:
        return sum(p.sums[column[key]] for p in landslide.pieces)

    def area(landslide: Slide) -> float:
        return total(landslide, "area") * unit_m2  # one rounding: whole units sum exactly

    kept = [landslide for landslide in slides if area(landslide) >= min_area_m2]
    # One vertex set and ring start wherever the strips were cut, --simplify 0 included: the
    # vertices strip borders leave on straight edges are dropped in pixel coordinates, where
    # they lie exactly on the line.
    outlines = [shapely.simplify(shapely.union_all(
        [g for p in landslide.pieces for g in p.geometries]), 0) for landslide in kept]
    geometries = [shapely.normalize(shapely.affinity.affine_transform(
        outline, to_map.to_shapely())) for outline in outlines]
    per_x, per_y = _centroid_scales(geometries, crs)
    if simplify_m > 0:
        for i, geometry in enumerate(geometries):
            tolerance = simplify_m / max(per_x[i], per_y[i])
            geometries[i] = _kept_apart(
                shapely.simplify(geometry, tolerance, preserve_topology=True),
                (geometry, outlines[i]), tolerance, mask_ds)
    perimeters = _perimeters_m(geometries, crs)  # of the outlines written
    rows = []
    for i, landslide in enumerate(kept):
        pixels = total(landslide, "pixels")
        row = [area(landslide), perimeters[i],
               math.ldexp(total(landslide, "prob"), -PROB_BITS) / pixels,
               max(p.sums[column["max"]] for p in landslide.pieces), pixels]
        if "slope_n" in column:
            slopes = total(landslide, "slope_n")
            low = min(p.sums[column["elev_min"]] for p in landslide.pieces)
            high = max(p.sums[column["elev_max"]] for p in landslide.pieces)
            row += [math.ldexp(total(landslide, "slope_sum"), -SLOPE_BITS) / slopes
                    if slopes else np.nan,
                    high - low if np.isfinite(low) else np.nan]
        rows.append(row)
    width = 7 if "slope_n" in column else 5
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


def _kept_apart(simplified: shapely.Geometry, outline: tuple[shapely.Geometry, shapely.Geometry],
                tolerance: float, mask_ds: rasterio.DatasetReader) -> shapely.Geometry:
    """``simplified`` less what it took beyond its slide's pixels (``outline``: on the map and
    in pixel coordinates) within ``tolerance`` of another slide's pixels. Each slide was
    simplified on its own and so strays at most its tolerance from its pixels: two slides a
    pixel or two apart overlapped. Cut so, two slides' outlines can only meet on pixels of
    both, which touch at most at a corner; a slide with no other within reach keeps its
    simplified outline. The neighbours' pixels are read from the mask, block by block around
    what strayed, so a neighbour in a strip not yet read counts too, and grown with square
    corners: they hold the round reach and add no arc of vertices."""
    on_map, in_pixels = outline
    strayed = shapely.difference(simplified, on_map)
    if shapely.is_empty(strayed):
        return simplified
    to_map = mask_ds.transform
    shortest = np.linalg.svd(np.reshape(to_map.to_shapely()[:4], (2, 2)), compute_uv=False)[-1]
    margin = math.ceil(tolerance / shortest) + 1  # pixels that a tolerance spans at most
    left, top, right, bottom = shapely.affinity.affine_transform(
        strayed, (~to_map).to_shapely()).bounds
    rows = (max(0, math.floor(top) - margin), min(mask_ds.height, math.ceil(bottom) + margin))
    cols = (max(0, math.floor(left) - margin), min(mask_ds.width, math.ceil(right) + margin))
    # each as GeoJSON once: rasterize converts a shapely outline again for every block
    own = (in_pixels, shapely.geometry.mapping(in_pixels))
    others = []
    for row in range(rows[0], rows[1], TERRAIN_BLOCK):
        for col in range(cols[0], cols[1], TERRAIN_BLOCK):
            window = Window(col, row, min(TERRAIN_BLOCK, cols[1] - col),
                            min(TERRAIN_BLOCK, rows[1] - row))
            others += [g for g in _other_pixels(mask_ds, window, own)
                       if shapely.dwithin(g, strayed, tolerance)]
    if not others:
        return simplified
    try:
        near = shapely.buffer(shapely.union_all(others), tolerance, join_style="mitre")
        kept = shapely.difference(simplified, shapely.difference(near, on_map))
        return kept if shapely.get_num_geometries(kept) == 1 else _rejoined(kept, on_map)
    except GEOSException:  # an overlay GEOS could not node (noisy slides on a rotated grid)
        return on_map  # the pixel outline, which no other slide's outline overlaps


def _rejoined(parts: shapely.Geometry, on_map: shapely.Geometry) -> shapely.Geometry:
    """One polygon from the ``parts`` a cut left of a slide's simplified outline: its pixels
    (``on_map``, 4-connected, so one polygon) with the parts that overlap them; a part outside
    them, a piece of what simplification took, is dropped. Where a cut went through the
    simplified outline of a thin slide, it left pieces that met at a point or not at all."""
    pieces = shapely.get_parts(parts)
    inside = shapely.area(shapely.intersection(pieces, on_map)) > 0
    return shapely.union_all([on_map, *pieces[inside]])


def _other_pixels(mask_ds: rasterio.DatasetReader, window: Window,
                  own: tuple[shapely.Geometry, dict]) -> list[shapely.Geometry]:
    """Landslide pixels of ``window`` not inside ``own`` (pixel coordinates, as a geometry and
    as GeoJSON), on the map."""
    shift = Affine.translation(window.col_off, window.row_off)
    slide = mask_ds.read(1, window=window) == 1
    box = shapely.box(window.col_off, window.row_off, window.col_off + window.width,
                      window.row_off + window.height)
    if slide.any() and shapely.area(shapely.intersection(own[0], box)) > 0:
        # burnt whole: a clip to the block that met it at a corner or an edge burnt a point or
        # a line, and a neighbour's pixel with it
        slide &= ~rasterize([own[1]], out_shape=slide.shape, transform=shift, dtype=np.uint8
                            ).astype(bool)
    rows, cols = np.flatnonzero(slide.any(axis=1)), np.flatnonzero(slide.any(axis=0))
    if not rows.size:
        return []
    # traced within the box of the pixels left: shapes scans every pixel it is given
    top, left = rows[0], cols[0]
    found = slide[top:rows[-1] + 1, left:cols[-1] + 1]
    at = mask_ds.transform @ shift @ Affine.translation(left, top)
    return [shapely.geometry.shape(geometry) for geometry, _ in
            shapes(found.astype(np.uint8), mask=found, transform=at, connectivity=4)]


def build_inventory(mask_path: Path, prob_path: Path, min_area_m2: float = 0.0,
                    simplify_m: float = 0.0, strip_rows: int | None = None,
                    dem: Path | None = None) -> Inventory:
    """Every landslide of :func:`slide_batches` in one inventory (held in memory: for small
    masks; ``write_inventories`` streams them to files)."""
    batches = list(slide_batches(mask_path, prob_path, min_area_m2, simplify_m, strip_rows, dem))
    return Inventory([g for b in batches for g in b.geometries],
                     {k: np.concatenate([b.attributes[k] for b in batches])
                      for k in batches[0].attributes}, batches[0].crs)


def _add_terrain(scene: Scene, window: Window, labels: np.ndarray, slide: np.ndarray,
                 sums: dict[str, np.ndarray]) -> None:
    """Slope and elevation of a strip's landslide pixels, folded into their components. Only
    the blocks of ``TERRAIN_BLOCK`` px that hold landslide pixels are read and their slope
    computed (each with its own halo, so a pixel's slope is the one a whole-strip read gives):
    landslides cover a few per cent of a scene."""
    size = sums["slope_n"].size
    for top in range(0, slide.shape[0], TERRAIN_BLOCK):
        for left in range(0, slide.shape[1], TERRAIN_BLOCK):
            block = np.s_[top:top + TERRAIN_BLOCK, left:left + TERRAIN_BLOCK]
            here = slide[block]
            if not here.any():
                continue
            elevation, slope = scene.terrain(Window(window.col_off + left, window.row_off + top,
                                                    here.shape[1], here.shape[0]))
            ids, elevation, slope = labels[block][here], elevation[here], slope[here]
            finite = np.isfinite(slope)
            sums["slope_sum"] += np.bincount(ids[finite], minlength=size,
                                             weights=_units(slope[finite], SLOPE_BITS))
            sums["slope_n"] += np.bincount(ids[finite], minlength=size)
            known = np.isfinite(elevation)  # NaN: no DEM data, skipped as fmin/fmax would
            if known.any():
                present = np.unique(ids[known])
                low = ndimage.minimum(elevation[known], ids[known], index=present)
                high = ndimage.maximum(elevation[known], ids[known], index=present)
                sums["elev_min"][present] = np.fmin(sums["elev_min"][present], low)
                sums["elev_max"][present] = np.fmax(sums["elev_max"][present], high)


def _units(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` rounded to whole units of 2**-``bits``, as float64: their sums are exact in
    any order, so the strips that --memory-mb cuts a slide into leave its means to the bit
    (float sums of probabilities far below 1 or slopes of flat ground differed in the last)."""
    return np.rint(np.ldexp(values.astype(np.float64), bits))


def _area_units(ds: rasterio.DatasetReader) -> tuple[np.ndarray, float]:
    """(a pixel's area in each row of ``ds``, in whole units; m² of a unit). A CRS unit's
    ground size is taken at each row's centre, as it varies with latitude in degrees and in
    Web Mercator. A pixel is the parallelogram of the geotransform's column and row steps, so
    its area is the determinant's (the product of the step lengths, ``ds.res``, is larger on a
    sheared grid), and scaling x and y by the ground scales scales that area by their product.
    Where it is the same in every row the unit is the pixel (an area is its pixel count times
    one pixel's); where it varies, a power of two of m² that gives the largest ``AREA_BITS``
    bits. Sums of whole units are exact in any order, so strips do not change them."""
    area = abs(ds.transform.determinant)
    if ds.crs is None:
        return np.ones(ds.height), area
    rows = np.arange(ds.height) + 0.5
    x, y = ds.transform @ (ds.width / 2, rows)
    per_x, per_y = ground_scales(ds.crs, x, y)
    areas = area * per_x * per_y
    if np.all(areas == areas[0]):
        return np.ones(ds.height), float(areas[0])
    unit = math.ldexp(1.0, int(np.frexp(areas.max())[1]) - AREA_BITS)
    return np.round(areas / unit), unit


def _centroids_lonlat(geometries: list, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (WGS 84, degrees) of each polygon's centroid; NaN without a CRS.
    Longitudes are within ±180°, where the GeoJSON inventory puts the outline: a grid in degrees
    that runs past the antimeridian keeps its x (180.0001) through a 4326 to 4326 transform."""
    if not geometries or crs is None:
        nan = np.full(len(geometries), np.nan)
        return nan, nan.copy()
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(geometries, dtype=object)))
    lon, lat = transform(crs, WGS84, xy[:, 0].tolist(), xy[:, 1].tolist())
    lon = np.asarray(lon, dtype=np.float64)
    return (np.where(np.abs(lon) > 180.0, (lon + 180.0) % 360.0 - 180.0, lon),
            np.asarray(lat, dtype=np.float64))


def _centroid_scales(geometries: list, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """Ground metres per CRS unit along x and y at each polygon's centroid; 1 without a CRS."""
    if not geometries or crs is None:
        ones = np.ones(len(geometries))
        return ones, ones.copy()
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(geometries, dtype=object)))
    return ground_scales(crs, xy[:, 0], xy[:, 1])


def _perimeters_m(geometries: list, crs: CRS | None) -> np.ndarray:
    """Boundary length in metres of each polygon: every segment scaled by ``ground_scales`` at
    its midpoint (one call for the layer), the rule of areas and pixel sizes in every CRS; 1
    per unit without a CRS. Summed segment by segment, ring by ring and part by part as GEOS
    sums a length, so a grid in metres (UTM) gives shapely's length to the last bit."""
    rings, owners = _rings_of(geometries)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    inner = ring_of[1:] == ring_of[:-1]  # a segment joins two points of one ring
    start, end = coords[:-1][inner], coords[1:][inner]
    if crs is None:
        per_x = per_y = np.ones(len(start))
    else:
        per_x, per_y = ground_scales(crs, (start[:, 0] + end[:, 0]) / 2,
                                     (start[:, 1] + end[:, 1]) / 2)
    dx, dy = (end[:, 0] - start[:, 0]) * per_x, (end[:, 1] - start[:, 1]) * per_y
    segments = np.sqrt(dx * dx + dy * dy)
    counts = np.bincount(ring_of[1:][inner], minlength=len(rings))  # segments per ring
    ends = np.cumsum(counts)
    lengths = [_sequential_sum(segments[end - count:end])
               for count, end in zip(counts, ends, strict=True)]
    totals = np.zeros(len(geometries))
    parts: dict[tuple[int, int], float] = {}
    for (geometry, part), length in zip(owners, lengths, strict=True):
        parts[geometry, part] = parts.get((geometry, part), 0.0) + length
    for (geometry, _), length in parts.items():
        totals[geometry] += length
    return totals


def _rings_of(geometries: list) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every ring of ``geometries`` (each part's shell, then its holes), and the (geometry,
    part) each belongs to, in order."""
    parts, geometry_of = shapely.get_parts(np.asarray(geometries, dtype=object),
                                           return_index=True)
    rings, part_of = shapely.get_rings(parts, return_index=True)
    return rings, [(int(geometry_of[part]), int(part)) for part in part_of]


def _sequential_sum(values: np.ndarray) -> float:
    """``values`` added first to last (as GEOS adds a ring's segments), not pairwise."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def inventory_paths(out_dir: Path, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    """``inventory``: the file of the first format asked; ``inventory_<format>``: the others.
    Checked before anything is mapped: no format (or a bare string, read letter by letter)
    failed only once the whole scene was mapped."""
    if isinstance(formats, str) or not formats:
        raise UsageError(f"inventory formats must be a list of {' or '.join(INVENTORY_FORMATS)}"
                         f", e.g. ['gpkg'], not {formats!r}")
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
    write_inventories(iter([inventory]), [path], metadata)


def write_inventories(batches: Iterator[Inventory], paths: Sequence[Path],
                      metadata: dict[str, str] | None = None) -> dict[str, float]:
    """Write ``batches`` as they come to each of ``paths`` (GeoPackage or GeoJSON), atomically;
    returns the landslides written and their area. The GeoPackage takes them in batches of
    ``WRITE_BATCH``, with ``metadata`` on its layer and its QGIS style stored inside; a GeoJSON
    file is then copied from it batch by batch, so neither holds more than a batch whatever the
    number of landslides."""
    packages = [p for p in paths if _driver(p) == "GPKG"]
    with contextlib.ExitStack() as stack:
        if packages:
            package = stack.enter_context(atomic_path(packages[0]))
        else:  # only a step on the way to the files asked for
            package = paths[0].with_name(f".{paths[0].stem}.{uuid.uuid4().hex[:8]}.gpkg")
            stack.callback(package.unlink, missing_ok=True)
        with _writing_inventory(paths[0]):
            summary = _write_package(batches, package, metadata)
            if packages:
                store_style(package, LAYER, "slidemap landslide inventory")
        for path in paths:
            if path not in packages[:1]:
                with _writing_inventory(path), atomic_path(path) as other:
                    _copy_layer(package, other)
    return summary


def _driver(path: Path) -> str:
    return "GeoJSON" if path.suffix.lower() in {".geojson", ".json"} else "GPKG"


def _write_package(batches: Iterator[Inventory], path: Path,
                   metadata: dict[str, str] | None) -> dict[str, float]:
    count, area, created = 0, 0.0, False
    held: list[Inventory] = []

    def flush() -> None:
        nonlocal created
        if created and not sum(len(b) for b in held):
            return
        crs = held[0].crs
        names = list(held[0].attributes)
        geometry = np.array([shapely.to_wkb(g) for b in held for g in b.geometries],
                            dtype=object)
        fields = [np.concatenate([b.attributes[n] for b in held]) for n in names]
        pyogrio.raw.write(path, geometry, fields, names, driver="GPKG",
                          geometry_type="MultiPolygon", promote_to_multi=True,
                          crs=crs.to_wkt() if crs else None, layer=LAYER, append=created,
                          layer_metadata=None if created or not metadata else metadata)
        created = True
        held.clear()

    for batch in batches:
        held.append(batch)
        count += len(batch)
        area += float(batch.attributes["area_m2"].sum())
        if sum(len(b) for b in held) >= WRITE_BATCH:
            flush()
    if held:
        flush()
    return {"landslides": count, "landslide_area_m2": area}


def _copy_layer(source: Path, target: Path) -> None:
    """Copy the landslides layer of ``source`` into a new file ``target``, batch by batch. A
    GeoJSON file is RFC 7946's (what its media type says): WGS 84 longitude/latitude, exteriors
    counter-clockwise, and each feature's ``id`` the GeoPackage's feature id, so both number
    the slides alike."""
    geojson = _driver(target) == "GeoJSON"
    with pyogrio.raw.open_arrow(source, layer=LAYER, use_pyarrow=False, batch_size=WRITE_BATCH,
                                return_fids=geojson) as (meta, stream):
        pyogrio.raw.write_arrow(stream, target, driver=_driver(target), layer=LAYER,
                                geometry_name=meta["geometry_name"] or "geometry",
                                geometry_type="MultiPolygon", crs=meta["crs"],
                                layer_options={"RFC7946": "YES", "ID_FIELD": meta["fid_column"]}
                                if geojson else None)


@contextlib.contextmanager
def _writing_inventory(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, sqlite3.Error, DataSourceError, DataLayerError) as exc:
        target = final_path(path)
        raise SlidemapError(f"cannot write {target} ({first_line(exc)}): check free disk "
                            f"space and that {target.parent} is writable") from exc
