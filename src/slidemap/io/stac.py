"""STAC Items: one as the input of ``predict`` (its image and DEM assets), one describing the
outputs (probability, mask, inventory) with the projection, raster, file and classification
extensions, so a catalogue or a STAC browser can index and show the map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pystac
import rasterio
import shapely
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
from rasterio.enums import WktVersion
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from slidemap.data.names import DatasetName, absolute_name, local_path
from slidemap.data.terrain import epsg_code
from slidemap.errors import SlidemapError
from slidemap.io.provenance import sha256_file
from slidemap.io.rasters import MASK_COLOURS

IMAGE_KEYS = ("image", "visual", "rgb", "ortho", "orthophoto", "data")
IMAGE_ROLES = ("data", "visual", "source")
DEM_KEYS = ("dem", "dsm", "dtm", "elevation")
DEM_ROLES = ("dem", "elevation", "dsm", "dtm")
RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "application/x-hdf5", "image/jp2",
                "application/x-ogc-vrt")


@dataclass(frozen=True)
class StacInputs:
    """What ``predict`` reads from an Item: the image, the DEM if it has one, the Item."""

    image: str
    dem: str | None
    item: pystac.Item
    source: str


def is_stac_item(name: DatasetName) -> bool:
    """Whether ``name`` is a local JSON file holding a STAC Item (a raster is never JSON)."""
    path = local_path(name)
    if path is None or path.suffix.lower() not in (".json", ".geojson") or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("type") == "Feature"
    except (OSError, ValueError, AttributeError):
        return False


def read_item(path: Path) -> StacInputs:
    """The image and DEM assets of the Item at ``path``: by key (``image``, ``visual``, ...;
    ``dem``, ``dsm``, ...) first, then by role; hrefs relative to the Item are resolved."""
    try:
        item = pystac.Item.from_file(str(path))
    except (pystac.STACError, ValueError, KeyError, TypeError) as exc:
        raise SlidemapError(f"STAC Item {path} cannot be read ({exc}): is it a STAC Item "
                            "(type Feature with assets)?") from exc
    dem_key = _find(item, DEM_KEYS, DEM_ROLES, exclude=())
    image_key = _find(item, IMAGE_KEYS, IMAGE_ROLES, exclude=(dem_key,))
    if image_key is None:
        raise SlidemapError(f"STAC Item {path} has no image asset (keys {sorted(item.assets)}): "
                            f"name it one of {', '.join(IMAGE_KEYS)} or give it the role 'data'")
    image = item.assets[image_key].get_absolute_href()
    dem = item.assets[dem_key].get_absolute_href() if dem_key else None
    return StacInputs(str(image), str(dem) if dem else None, item, str(path))


def listed_outputs(path: Path) -> set[Path]:
    """The files the Item at ``path`` lists as a prediction's outputs (``./NAME`` beside it), if
    it is an Item that ``predict`` wrote (a ``slidemap:model`` property), else none: what an
    earlier run of the scene wrote, told apart from a file that only has such a name (a truth
    inventory ``<stem>_landslides.geojson`` beside the scene), which a rerun must leave alone."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return set()
    properties = record.get("properties") if isinstance(record, dict) else None
    assets = record.get("assets") if isinstance(record, dict) else None
    if not (isinstance(properties, dict) and "slidemap:model" in properties
            and isinstance(assets, dict)):
        return set()
    hrefs = [asset.get("href") for asset in assets.values() if isinstance(asset, dict)]
    return {path.parent / href[2:] for href in hrefs
            if isinstance(href, str) and href.startswith("./") and "/" not in href[2:]}


def _find(item: pystac.Item, keys: Sequence[str], roles: Sequence[str],
          exclude: Sequence[str | None]) -> str | None:
    rasters = {k: a for k, a in item.assets.items()
               if k not in exclude and (a.media_type is None or
                                        a.media_type.split(";")[0].strip() in RASTER_TYPES)}
    for key in keys:
        if key in rasters:
            return key
    for key, asset in rasters.items():
        if set(asset.roles or ()) & set(roles):
            return key
    return None


def corners(transform: Affine, width: int, height: int) -> list[tuple[float, float]]:
    """The grid's four corners in its CRS, in pixel order: a south-up or rotated grid's too."""
    return [transform @ (col, row) for col, row in ((0, 0), (width, 0), (width, height),
                                                    (0, height))]


def envelope(points: Sequence[tuple[float, float]]) -> list[float]:
    """[minx, miny, maxx, maxy] of ``points`` (STAC's bbox order, whichever way the grid runs)."""
    xs, ys = zip(*points, strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def _footprint(crs: rasterio.crs.CRS, outline: Sequence[tuple[float, float]]) -> dict:
    """The scene's outline in WGS 84 (edges densified, so a UTM rectangle stays faithful),
    counter-clockwise as GeoJSON (RFC 7946) asks, whichever way the grid's rows run."""
    minx, miny, maxx, maxy = envelope(outline)
    edge = max(maxx - minx, maxy - miny) / 4
    polygon = shapely.segmentize(shapely.Polygon(outline), edge)
    warped = transform_geom(crs, "EPSG:4326", mapping(polygon), precision=7,
                            antimeridian_cutting=True)
    oriented = shapely.orient_polygons(shape(warped), exterior_cw=False)
    return dict(json.loads(shapely.to_geojson(oriented)))


def _bbox(geometry: dict) -> list[float]:
    """[west, south, east, north] of a WGS 84 footprint. One cut at the antimeridian (parts
    ending at +180 and parts starting at -180) gives west > east, as RFC 7946 (5.2) has it:
    its envelope, [-180, ..., 180], would put the scene at every longitude of its latitudes."""
    footprint = shape(geometry)
    bounds = [part.bounds for part in getattr(footprint, "geoms", [footprint])]
    eastern = [b for b in bounds if b[2] >= 180.0]  # west of the line, in the east
    western = [b for b in bounds if b[0] <= -180.0]
    west, south, east, north = footprint.bounds
    if eastern and western and len(eastern) + len(western) == len(bounds):
        west, east = min(b[0] for b in eastern), max(b[2] for b in western)
    return [west, south, east, north]


def _media(name: str) -> str | None:
    return pystac.MediaType.GEOTIFF if name.lower().endswith((".tif", ".tiff")) else None


def checksum(path: Path) -> str:
    """A file:checksum multihash: 0x12 (SHA2-256), 0x20 (32 bytes), the digest."""
    return "1220" + sha256_file(path)


def output_item(stem: str, outputs: dict[str, tuple[Path, Path]], grid: dict,
                prob_scale: float | None, tags: dict[str, str],
                source: StacInputs | None) -> pystac.Item:
    """The Item of one prediction. ``outputs``: key → (final path, file to describe now: the
    temporary file with the same bytes); hrefs are the final names relative to the Item."""
    crs, transform = grid["crs"], grid["transform"]
    width, height = grid["width"], grid["height"]
    outline = corners(transform, width, height)
    geometry = _footprint(crs, outline)
    # the scene's time, as its Item gives it (one instant, or a range with datetime null, as
    # a mosaic's): the map is of the ground then; the time of mapping is "created"
    when = start = end = None
    if source is not None:
        when = source.item.datetime
        start = source.item.common_metadata.start_datetime
        end = source.item.common_metadata.end_datetime
    if when is None and (start is None or end is None):
        when, start, end = datetime.now(timezone.utc), None, None
    item = pystac.Item(
        id=f"{stem}-landslides", geometry=geometry, bbox=_bbox(geometry),
        datetime=when, start_datetime=start, end_datetime=end,
        properties={"created": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                    "slidemap:version": tags.get("SLIDEMAP_VERSION", ""),
                    "slidemap:model": tags.get("SLIDEMAP_MODEL", ""),
                    "slidemap:model_sha256": tags.get("SLIDEMAP_MODEL_SHA256", ""),
                    "slidemap:threshold": float(tags.get("SLIDEMAP_THRESHOLD", "nan")),
                    "slidemap:command": tags.get("SLIDEMAP_COMMAND", ""),
                    **{f"slidemap:{key.lower()}": tags[f"SLIDEMAP_{key}"]
                       for key in ("OPTIONS", "INVENTORY") if f"SLIDEMAP_{key}" in tags}})
    for key, name in (("image", tags.get("SLIDEMAP_IMAGE")), ("dem", tags.get("SLIDEMAP_DEM"))):
        if name:  # the inputs, so the Item reads back as the input of predict
            item.add_asset(key, pystac.Asset(href=absolute_name(name), roles=["source"],
                                             title=f"input {key}", media_type=_media(name)))
    if source is not None:
        item.add_link(pystac.Link("derived_from", Path(source.source).resolve().as_uri(),
                                  media_type=pystac.MediaType.JSON))
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = epsg_code(crs) if crs is not None else None
    if epsg is not None:
        projection.code = f"EPSG:{epsg}"
    elif crs is not None:
        projection.wkt2 = crs.to_wkt(version=WktVersion.WKT2_2019)  # rasterio's default: WKT1
    projection.shape = [height, width]
    projection.transform = list(transform)[:6]
    projection.bbox = envelope(outline)
    RasterExtension.add_to(item)
    FileExtension.add_to(item)
    ClassificationExtension.add_to(item)
    media = {".tif": pystac.MediaType.COG, ".gpkg": pystac.MediaType.GEOPACKAGE,
             ".geojson": pystac.MediaType.GEOJSON, ".qml": "text/xml"}
    for key, (final, now) in outputs.items():
        asset = pystac.Asset(href=f"./{final.name}", media_type=media.get(final.suffix),
                             roles=["metadata"] if key.endswith("style") else ["data"],
                             title=_TITLES.get(key, _TITLES.get(key.split("_")[0], key)))
        item.add_asset(key, asset)
        files = FileExtension.ext(asset)
        files.size = now.stat().st_size
        files.checksum = checksum(now)
        if key == "prob":
            _raster_band(asset, "float32" if prob_scale is None else "uint8",
                         None if prob_scale is None else 255, prob_scale)
        elif key == "mask":
            _raster_band(asset, "uint8", 255, None)
            ClassificationExtension.ext(asset).classes = [
                Classification.create(0, "no landslide mapped", name="background",
                                      color_hint=_colour_hint(0)),
                Classification.create(1, "landslide mapped", name="landslide",
                                      color_hint=_colour_hint(1)),
                Classification.create(255, "no data", name="nodata", nodata=True)]
    return item


def _colour_hint(value: int) -> str:
    """The mask's colour-table colour of ``value`` as RRGGBB: the Item's legend is the one the
    GeoTIFF draws (it gave black for the background the file paints white)."""
    return "{:02X}{:02X}{:02X}".format(*MASK_COLOURS[value][:3])


_TITLES = {"prob": "landslide probability", "mask": "landslide mask",
           "inventory": "landslide inventory", "style": "QGIS style of the inventory",
           "prob_style": "QGIS style of the probability",
           "mask_style": "QGIS style of the mask"}


def _raster_band(asset: pystac.Asset, dtype: str, nodata: float | None,
                 scale: float | None) -> None:
    band = RasterBand.create(data_type=DataType(dtype), nodata=nodata if nodata is not None
                             else NoDataStrings.NAN, scale=scale, offset=0.0 if scale else None)
    RasterExtension.ext(asset).bands = [band]


def write_item(item: pystac.Item, path: Path) -> None:
    """Write ``item`` as JSON at ``path`` (hrefs relative to it, no self link)."""
    path.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False),
                               indent=2) + "\n")
