"""The report's section on one prediction: map, largest landslides, sizes, provenance, caveat.

The numbers on the map are the ranks of the table (1 = the largest landslide), so that a reader
can go from a row to its outline and back; the table also gives each landslide's feature id in
the inventory, to find it in a GIS. Polygons are read largest first and at most
``MAX_OUTLINES`` of them are drawn (smaller ones are below a pixel of the map anyway).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from slidemap import __version__
from slidemap.data.terrain import bounds_centre, metres_per_unit
from slidemap.errors import SlidemapError
from slidemap.infer.vectorize import LAYER  # the GeoPackage holds others too (layer_styles)
from slidemap.report.interactive import MAX_FEATURES, interactive_map
from slidemap.report.mapview import (
    Outlines,
    backdrop_picture,
    crs_name,
    linear_unit,
    lonlat,
    map_figure,
    map_grid,
)
from slidemap.report.markup import (
    Html,
    Rows,
    area,
    grid,
    hectares,
    image,
    pairs,
    probability,
    square_metres,
)
from slidemap.report.plots import (
    jpeg_bytes,
    png_bytes,
    probability_figure,
    size_histogram_figure,
)
from slidemap.report.provenance import ADAPTED, Provenance, accuracy_caveat, of_prediction

LARGEST = 10
MAX_OUTLINES = 20_000
SUFFIXES = ("_landslides.gpkg", "_landslides.geojson")  # the first found of a scene is read
NOT_RECORDED = "not recorded"


class Inventory:
    """The attribute table of an inventory (no geometry), its feature ids and CRS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            meta, self.fids, _, values = pyogrio.raw.read(path, layer=LAYER, read_geometry=False,
                                                          return_fids=True)
        except (DataSourceError, DataLayerError) as exc:
            raise SlidemapError(f"inventory {path} cannot be read ({exc}): "
                                "re-run slidemap predict") from exc
        self.fields = dict(zip(meta["fields"], values, strict=True))
        self.areas = np.asarray(self.fields.get("area_m2", []), dtype=np.float64)
        try:
            self.crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
        except CRSError:
            self.crs = None
        self.order = np.argsort(-self.areas, kind="stable")  # rank 1 = largest

    def __len__(self) -> int:
        return len(self.areas)

    def geometries(self, ranks: int) -> list[shapely.Geometry]:
        """The polygons of the ``ranks`` largest landslides, largest first."""
        wanted = self.fids[self.order[:ranks]]
        if not len(wanted):
            return []
        _, fids, wkb, _ = pyogrio.raw.read(self.path, layer=LAYER, fids=wanted, return_fids=True)
        by_fid = dict(zip(fids.tolist(), shapely.from_wkb(wkb), strict=True))
        return [by_fid[f] for f in wanted.tolist() if by_fid.get(f) is not None]

    def column(self, name: str) -> np.ndarray | None:
        values = self.fields.get(name)
        return None if values is None else np.asarray(values, dtype=np.float64)


def scene_name(inventory: Path) -> str:
    return next(inventory.name.removesuffix(s) for s in SUFFIXES if inventory.name.endswith(s))


def inventories(folder: Path) -> list[Path]:
    """One inventory per scene predicted into ``folder``, the GeoPackage if there is one."""
    found: dict[str, Path] = {}
    for suffix in SUFFIXES:
        for path in sorted(folder.glob(f"*{suffix}")):
            found.setdefault(scene_name(path), path)
    return sorted(found.values())


def prediction_section(path: Path, given: Provenance | None = None, interactive: bool = False
                       ) -> tuple[Rows, str]:
    """Cards and HTML of the prediction whose inventory is ``path`` (with an interactive map
    too if asked)."""
    stem = scene_name(path)
    prob, mask = path.with_name(f"{stem}_prob.tif"), path.with_name(f"{stem}_mask.tif")
    inventory = Inventory(path)
    known = of_prediction(prob, mask, given)
    total = float(inventory.areas.sum())
    html = [f"<h2>{escape(stem)}: map and inventory</h2>"]
    ranked = inventory.geometries(min(len(inventory), MAX_OUTLINES))
    if mask.exists():
        html.append(_map(inventory, ranked, known, prob, mask, stem))
    else:
        html.append(f"<p class='note'>No map: {escape(mask.name)} is missing beside the "
                    "inventory.</p>")
    html.append(_caveat(known))
    if interactive and mask.exists():
        html.append(_interactive(inventory, ranked, known, prob, mask))
    html.append(_largest(inventory, ranked[:LARGEST]))
    html.append("<h3>Summary</h3>" + pairs(_summary(inventory, mask)))
    pixel = _pixel_area(mask)
    figures = [image(png_bytes(size_histogram_figure(inventory.areas, pixel)),
                     "landslide sizes: counts per logarithmic bin and the share of the total "
                     "area each bin holds", "half")]
    if prob.exists():
        figures.append(image(png_bytes(probability_figure(prob, max_side=600)),
                             f"probability {prob.name} (decimated preview; blank = no data)",
                             "half"))
    html.append("<div class='row'>" + "".join(figures) + "</div>")
    outputs = sorted(p for p in path.parent.iterdir() if p.name.startswith(f"{stem}_")
                     and p.is_file() and not p.name.endswith(".aux.xml"))
    html.append(_provenance(known, inventory, outputs))
    cards: Rows = [("landslides", len(inventory)), ("landslide area", hectares(total))]
    return cards, "".join(html)


def _map(inventory: Inventory, ranked: list[shapely.Geometry], known: Provenance,
         prob: Path, mask: Path, stem: str) -> str:
    try:
        grid_ = map_grid(mask)
    except (RasterioError, OSError) as exc:
        return (f"<p class='note'>No map: {escape(mask.name)} cannot be read "
                f"({escape(str(exc))})</p>")
    picture, backdrop, why = backdrop_picture(known.image, prob, grid_)
    ranked = _on_crs(ranked, inventory.crs, grid_.crs)
    labels = []
    for rank, geometry in enumerate(ranked[:LARGEST], start=1):
        point = shapely.point_on_surface(geometry)
        labels.append((rank, point.x, point.y))
    figure = map_figure(picture, grid_, Outlines(ranked, labels), f"{stem}: landslides mapped",
                        backdrop)
    if len(inventory) == 1:
        drawn = "the 1 landslide outline; number 1 is its rank in the table below"
    elif labels:
        shown = f"{len(ranked):,} of {len(inventory):,}" if len(ranked) < len(inventory) \
            else f"all {len(inventory):,}"
        drawn = (f"{shown} landslide outlines; numbers 1–{len(labels)} are the ranks in the "
                 "table below")
    else:
        drawn = "no landslide mapped"
    caption = (f"Map of {stem} ({backdrop}): {drawn}. CRS {crs_name(grid_.crs)}."
               + (f" No imagery: {why}." if why else ""))
    return image(jpeg_bytes(figure), caption, "map", "image/jpeg")


def _on_crs(geometries: list[shapely.Geometry], source: CRS | None, target: CRS | None
            ) -> list[shapely.Geometry]:
    """The outlines in the map's CRS: a GeoJSON inventory is in WGS 84 (RFC 7946), the map on
    the image's grid."""
    if source is None or target is None or source == target or not geometries:
        return geometries
    moved = transform_geom(source, target, [mapping(g) for g in geometries])
    return [shape(g) for g in moved]


def _interactive(inventory: Inventory, ranked: list[shapely.Geometry], known: Provenance,
                 prob: Path, mask: Path) -> str:
    mean_prob = inventory.column("mean_prob")
    rows = [(float(inventory.areas[i]), float(mean_prob[i]) if mean_prob is not None
             else float("nan")) for i in inventory.order[:MAX_FEATURES]]
    try:
        return interactive_map(scene_name(inventory.path), known.image, prob, mask,
                               inventory.crs, ranked, rows, min(LARGEST, len(ranked)))
    except (RasterioError, OSError) as exc:
        return f"<p class='note'>No interactive map: {escape(str(exc))}</p>"


def _largest(inventory: Inventory, geometries: list[shapely.Geometry]) -> str:
    if not geometries:
        return "<p class='note'>No landslide was mapped.</p>"
    centroids = shapely.centroid(np.array(geometries, dtype=object))
    xs, ys = shapely.get_x(centroids), shapely.get_y(centroids)
    lon, lat = lonlat(inventory.crs, xs, ys)
    projected = inventory.crs is not None and not inventory.crs.is_geographic
    mean_prob = inventory.column("mean_prob")
    columns = ["#", "area", "mean probability", "centroid longitude (°)",
               "centroid latitude (°)"]
    if projected:
        unit = linear_unit(inventory.crs)
        columns += [f"easting ({unit})", f"northing ({unit})"]
    columns.append("inventory fid")
    rows = []
    for rank, index in enumerate(inventory.order[:len(geometries)]):
        row = [str(rank + 1), square_metres(inventory.areas[index]),
               probability(mean_prob[index]) if mean_prob is not None else "—",
               _degrees(lon[rank]), _degrees(lat[rank])]
        if projected:
            row += [f"{xs[rank]:,.0f}", f"{ys[rank]:,.0f}"]
        row.append(f"{int(inventory.fids[index])}")
        rows.append(row)
    title = (f"The {len(rows)} largest landslides" if len(inventory) > len(rows)
             else f"All {len(rows)} landslides, largest first" if len(rows) > 1
             else "The landslide")
    return f"<h3>{title}</h3>" + grid(columns, rows)


def _degrees(value: float) -> str:
    return f"{value:.5f}" if np.isfinite(value) else "—"


def _summary(inventory: Inventory, mask: Path) -> Rows:
    areas = inventory.areas
    rows: Rows = [("landslides", len(inventory)), ("total area", area(float(areas.sum())))]
    if len(inventory):
        rows += [("median area", square_metres(float(np.median(areas)))),
                 ("largest area", square_metres(float(areas.max()))),
                 ("smallest area", square_metres(float(areas.min())))]
        pixels = inventory.column("pixels")
        if pixels is not None:
            rows.append(("landslides of a single raster pixel", int((pixels == 1).sum())))
        mean_prob = inventory.column("mean_prob")
        if mean_prob is not None and pixels is not None and pixels.sum() > 0:
            weighted = float((mean_prob * pixels).sum() / pixels.sum())
            rows.append(("mean probability inside the outlines", probability(weighted)))
    counts = _mask_counts(mask)
    if counts is not None:
        valid, slide, pixel = counts
        if pixel:
            rows.append(("ground mapped (valid pixels)", area(valid * pixel)))
        share = Html(f"{100 * slide / valid:.1f} %") if valid else Html("n/a")
        rows.append(("share of the mapped ground classed landslide", share))
    return rows


def _pixel_area(mask: Path) -> float | None:
    """Square metres of one pixel of a georeferenced raster at its centre (``metres_per_unit``:
    in degrees too), as the inventory measures it: the geotransform's determinant, which a
    rotated or sheared grid's diagonal terms alone understate (to 0 at a quarter turn); None
    without a CRS."""
    try:
        with rasterio.open(mask) as ds:
            if ds.crs is None:
                return None
            per_x, per_y = metres_per_unit(ds.crs, *bounds_centre(ds.bounds))
            return abs(ds.transform.determinant) * per_x * per_y
    except (RasterioError, OSError):
        return None


def _mask_counts(mask: Path) -> tuple[int, int, float | None] | None:
    """Valid and landslide pixels of the mask, block by block, and the pixel area in m²."""
    try:
        with rasterio.open(mask) as ds:
            nodata = 255 if ds.nodata is None else ds.nodata
            valid = slide = 0
            for _, window in ds.block_windows(1):
                block = ds.read(1, window=window)
                valid += int((block != nodata).sum())
                slide += int((block == 1).sum())
    except (RasterioError, OSError):
        return None
    return valid, slide, _pixel_area(mask)


def _provenance(known: Provenance, inventory: Inventory, outputs: list[Path]) -> str:
    models = ", ".join(known.models) or NOT_RECORDED
    digests = ", ".join(known.model_sha256) or NOT_RECORDED
    rows: Rows = [
        ("scene image", known.image or NOT_RECORDED),
        ("DEM", known.dem or ("none" if known.image else NOT_RECORDED)),
        ("model file", models),
        ("model sha256", digests),
        ("threshold", f"{known.threshold:g}" if known.threshold is not None else NOT_RECORDED),
        ("slidemap version", known.version or f"{NOT_RECORDED} (this report: slidemap "
                                              f"{__version__})"),
        ("command", known.command or NOT_RECORDED),
        ("options", known.options or NOT_RECORDED),
        ("predicted", known.created or NOT_RECORDED),
        ("outputs", ", ".join(p.name for p in outputs)),
        ("CRS", crs_name(inventory.crs)),
    ]
    if known.adapted:
        rows.insert(4, ("adapted to the scene", known.adapted))
    return "<h3>Provenance</h3>" + pairs(rows)


def _caveat(known: Provenance) -> str:
    said = "".join(f"<p>{f'<b>{escape(name)}</b>: ' if name else ''}{escape(text)}</p>"
                   for name, text in accuracy_caveat(known.models))
    if known.adapted_trained:
        said += f"<p>{escape(ADAPTED)}</p>"
    return f"<div class='caveat'><h3>What to expect on new ground</h3>{said}</div>"
