"""The report's map of a prediction: the imagery, the landslide outlines numbered by size, and
what makes it a map (coordinates, CRS, scale bar, north arrow, where nothing was mapped).

Every raster is read decimated to at most ``MAP_SIDE`` pixels a side (``out_shape``, which GDAL
serves from overviews when the file has them), so the map costs the same on any scene size.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import ScaledTranslation, Transform
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.warp import transform as transform_points

from slidemap.data.terrain import crs_name, metres_per_unit
from slidemap.data.windows import flipped, north_up_flips
from slidemap.explain.overlay import rgb_preview
from slidemap.report.plots import new_figure

MAP_SIDE = 1200
OUTLINE = "#ffe000"
WGS84 = "EPSG:4326"
NICE_STEPS = (1, 2, 5)
TICK_SIZE = "small"
ARROW = 32  # the north arrow's length in points
MARGIN = 10  # points between the map's frame and the scale bar and north arrow outside it
# warps grids that have no CRS by their geotransforms alone: in and out alike, nothing is
# reprojected, so which CRS does not matter
PLANE = CRS.from_epsg(3857)


@dataclass
class MapGrid:
    """The decimated grid the map is drawn on (north up, east right), and what was mapped on it."""

    shape: tuple[int, int]
    transform: Affine
    crs: CRS | None
    valid: np.ndarray  # True where the prediction has data
    source_shape: tuple[int, int]  # the prediction's own grid
    source_transform: Affine
    # rows, columns of a read of the prediction's own grid reversed to face north up, east right
    # (a south-up grid is read as it lies, then flipped: imshow draws row 0 at the top)
    flips: tuple[bool, bool] = (False, False)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """left, right, bottom, top in CRS units (what ``imshow`` wants)."""
        height, width = self.shape
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (width, height)
        return left, right, min(bottom, top), max(bottom, top)

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the map's middle in CRS units, where its ground scale is measured."""
        left, right, bottom, top = self.extent
        return (left + right) / 2, (bottom + top) / 2


def map_grid(mask_path: Path, max_side: int = MAP_SIDE, crs: str | None = None) -> MapGrid:
    """The prediction's mask read decimated (nearest, so nodata stays nodata), on its own grid
    or, given ``crs``, warped onto a grid in that CRS. A rotated or sheared grid is warped onto
    a north-up one of its own CRS (an image cannot be drawn rotated); a south-up one is read
    as it lies and flipped."""
    with _quiet(), rasterio.open(mask_path) as ds:
        nodata = 255 if ds.nodata is None else ds.nodata
        if crs is not None and ds.crs is not None:
            target = CRS.from_user_input(crs)
            transform, width, height = calculate_default_transform(ds.crs, target, ds.width,
                                                                   ds.height, *ds.bounds)
            return _warped_grid(ds, target, transform, (height, width), max_side, nodata)
        if ds.transform.b or ds.transform.d:
            transform, shape = _upright_grid(ds)
            return _warped_grid(ds, ds.crs, transform, shape, max_side, nodata)
        return _own_grid(ds, max_side, nodata)


def _own_grid(ds: rasterio.DatasetReader, max_side: int, nodata: float) -> MapGrid:
    """The mask's own (axis-aligned) grid read decimated, flipped to face north up."""
    factor = max(1, math.ceil(max(ds.height, ds.width) / max_side))
    shape = (math.ceil(ds.height / factor), math.ceil(ds.width / factor))
    mask = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    transform = ds.transform @ Affine.scale(ds.width / shape[1], ds.height / shape[0])
    flips = north_up_flips(transform)
    if flips[0]:
        transform = transform @ Affine.translation(0, shape[0]) @ Affine.scale(1, -1)
    if flips[1]:
        transform = transform @ Affine.translation(shape[1], 0) @ Affine.scale(-1, 1)
    return MapGrid(shape, transform, ds.crs, flipped(mask != nodata, flips),
                   (ds.height, ds.width), ds.transform, flips)


def _upright_grid(ds: rasterio.DatasetReader) -> tuple[Affine, tuple[int, int]]:
    """A north-up grid over a rotated or sheared dataset's extent, with pixels of its area."""
    left, bottom, right, top = ds.bounds  # the envelope of the four corners
    side = math.sqrt(abs(ds.transform.determinant))
    shape = (max(1, math.ceil((top - bottom) / side)), max(1, math.ceil((right - left) / side)))
    return Affine(side, 0, left, 0, -side, top), shape


def _warped_grid(ds: rasterio.DatasetReader, target: CRS | None, transform: Affine,
                 full: tuple[int, int], max_side: int, nodata: float) -> MapGrid:
    """The mask warped (nearest) onto ``transform`` in ``target``, decimated to ``max_side``."""
    height, width = full
    factor = max(1, math.ceil(max(height, width) / max_side))
    shape = (math.ceil(height / factor), math.ceil(width / factor))
    transform = transform @ Affine.scale(width / shape[1], height / shape[0])
    src_crs, dst_crs = warp_crs(ds.crs, target, str(ds.name))
    with WarpedVRT(ds, src_crs=src_crs, crs=dst_crs, transform=transform, width=shape[1],
                   height=shape[0], resampling=Resampling.nearest, nodata=nodata) as vrt:
        mask = vrt.read(1)
    return MapGrid(shape, transform, target, mask != nodata, shape, transform)


def warp_crs(source: CRS | None, target: CRS | None, name: str) -> tuple[CRS, CRS]:
    """The CRSs to warp ``name`` from and to: its own and the map's, or, when neither has one,
    a stand-in for both (the same CRS in and out: pixels move by their geotransforms alone).
    Raises RasterioError when only one has a CRS."""
    if source is None and target is None:
        return PLANE, PLANE
    if source is None or target is None:
        raise RasterioError(f"{name} and the prediction are on different grids and one has "
                            "no CRS")
    return source, target


def on_grid(path: str | Path, bands: list[int], grid: MapGrid,
            resampling: Resampling = Resampling.average) -> np.ndarray:
    """Bands of a raster on ``grid`` as physical values (band scale and offset applied, as a
    uint8 probability needs), float32 with NaN where nodata.

    The prediction's own grid is read decimated directly (overviews used if present) and
    flipped as the grid is; any other grid or CRS is warped onto it. Raises
    RasterioError/OSError if it cannot be read.
    """
    with _quiet(), rasterio.open(path) as src:
        height, width = grid.shape
        same_grid = (src.crs == grid.crs and (src.height, src.width) == grid.source_shape
                     and src.transform.almost_equals(grid.source_transform))
        if same_grid:
            data = flipped(src.read(bands, out_shape=(len(bands), height, width),
                                    resampling=resampling, masked=True), grid.flips)
        else:
            src_crs, dst_crs = warp_crs(src.crs, grid.crs, str(path))
            with WarpedVRT(src, src_crs=src_crs, crs=dst_crs, transform=grid.transform,
                           width=width, height=height, resampling=resampling) as vrt:
                data = vrt.read(bands, masked=True)
        scales = np.array([src.scales[b - 1] or 1.0 for b in bands], np.float32)[:, None, None]
        offsets = np.array([src.offsets[b - 1] or 0.0 for b in bands], np.float32)[:, None, None]
    return np.ma.filled(data.astype(np.float32) * scales + offsets, np.nan)


def imagery(image: str, grid: MapGrid) -> np.ndarray:
    """The image's first three bands (or its first, as grey) on ``grid``, NaN where nodata."""
    with _quiet(), rasterio.open(image) as src:
        bands = [1, 2, 3] if src.count >= 3 else [1]
    return on_grid(image, bands, grid)


def probability_backdrop(prob_path: Path, grid: MapGrid) -> np.ndarray:
    """A grey picture of the probability (dark = likely) when there is no imagery to show."""
    prob = np.clip(on_grid(prob_path, [1], grid, Resampling.nearest)[0], 0, 1)
    grey = np.where(np.isfinite(prob), 235 - 170 * np.nan_to_num(prob), 0)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def with_nodata(picture: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``picture`` with grey stripes blended over every pixel that was not mapped."""
    rows, cols = np.indices(valid.shape)
    stripes = np.where(((rows + cols) // 5) % 2 == 0, 215, 150).astype(np.float32)
    out = picture.astype(np.float32)
    out[~valid] = 0.35 * out[~valid] + 0.65 * stripes[~valid, None]
    return np.round(out).astype(np.uint8)


@dataclass
class Outlines:
    """Polygons to draw, in the map's CRS, and the numbered ones' label points (rank 1 first)."""

    geometries: list[shapely.Geometry]
    labels: list[tuple[int, float, float]]


def map_figure(picture: np.ndarray, grid: MapGrid, outlines: Outlines, title: str,
               backdrop: str) -> Figure:
    """The map: ``picture`` (RGB on ``grid``), outlines, numbers, ticks, CRS, scale, north."""
    extent = grid.extent
    aspect = _aspect(grid)
    tall = (extent[3] - extent[2]) * aspect / (extent[1] - extent[0])  # as drawn, not pixels
    # margins: ticks and legend below, the scale bar above
    figure = new_figure(10.5, min(14.0, max(4.0, 10.5 * tall * 0.92 + 1.7)))
    ax = figure.add_subplot()
    ax.imshow(picture, extent=extent, interpolation="antialiased")
    rings = [shapely.get_coordinates(ring) for geometry in outlines.geometries
             for ring in shapely.get_rings(shapely.get_parts(geometry))]
    if rings:
        ax.add_collection(LineCollection(rings, colors="black", linewidths=3.2))
        ax.add_collection(LineCollection(rings, colors=OUTLINE, linewidths=1.8))
    spacing = 0.04 * max(extent[1] - extent[0], extent[3] - extent[2])
    for rank, (x, y), (lx, ly) in zip(*_placed(outlines.labels, spacing, extent), strict=True):
        if (lx, ly) != (x, y):  # moved off a neighbour's number: a leader line to the slide
            ax.plot([x, lx], [y, ly], color="black", linewidth=0.9)
            ax.plot([x], [y], "o", color="black", markersize=2.5)
        ax.text(lx, ly, str(rank), ha="center", va="center", fontsize=8, fontweight="bold",
                bbox={"boxstyle": "circle,pad=0.25", "facecolor": "white",
                      "edgecolor": "black", "linewidth": 0.8})
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect(aspect)
    _coordinates(ax, grid.crs)
    _scale_bar(ax, grid)
    _north_arrow(ax, grid)
    handles = [Line2D([], [], color=OUTLINE, linewidth=2.5,
                      label="mapped landslide; number = rank by area (table)"),
               Patch(label="no data: not mapped", facecolor="#d0d0d0",
                     edgecolor="#707070", hatch="////")]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small",
                  frameon=False, title=f"{title} · {backdrop}", title_fontsize="small")
    return figure


def _aspect(grid: MapGrid) -> float:
    """How much longer a y unit is drawn than an x unit: a y unit's ground metres against an
    x unit's at the map's middle (``metres_per_unit``: in degrees, the degree of latitude
    against the shorter degree of longitude); 1 without a CRS."""
    if grid.crs is None:
        return 1.0
    per_x, per_y = metres_per_unit(grid.crs, *grid.centre)
    return per_y / per_x


def _placed(labels: list[tuple[int, float, float]], spacing: float,
            extent: tuple[float, float, float, float]
            ) -> tuple[list[int], list[tuple[float, float]], list[tuple[float, float]]]:
    """Ranks, their points, and where to write each number so that no two overlap: on the
    point when it is free, else on the nearest free spot of rings around it."""
    left, right, bottom, top = extent
    ranks: list[int] = []
    points: list[tuple[float, float]] = []
    spots: list[tuple[float, float]] = []
    for rank, x, y in labels:
        candidates = [(x, y)] + [
            (x + ring * spacing * math.cos(a), y + ring * spacing * math.sin(a))
            for ring in (1, 2, 3) for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)]
        inside = [(cx, cy) for cx, cy in candidates
                  if left + spacing / 2 <= cx <= right - spacing / 2
                  and bottom + spacing / 2 <= cy <= top - spacing / 2] or [(x, y)]
        free = [c for c in inside
                if all(math.dist(c, spot) >= spacing for spot in spots)]
        ranks.append(rank)
        points.append((x, y))
        spots.append(free[0] if free else inside[0])
    return ranks, points, spots


def linear_unit(crs: CRS) -> str:
    """The unit of a projected CRS's coordinates, ``m`` for metres."""
    unit = crs.linear_units or "m"
    return "m" if unit.lower() in ("metre", "meter", "m") else unit


def lonlat(crs: CRS | None, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (WGS 84) of points in ``crs``; NaN without a CRS."""
    if crs is None or not len(xs):
        return np.full(len(xs), np.nan), np.full(len(ys), np.nan)
    lon, lat = transform_points(crs, WGS84, list(map(float, xs)), list(map(float, ys)))
    return np.asarray(lon), np.asarray(lat)


class _FittingLocator(MaxNLocator):
    """At most six ticks (none in the corners), and no more than leave each label, written
    along its axis as the map writes both, room on the axis as drawn: on a map of a long
    strip of ground a fixed six piled the short side's labels into one smudge."""

    def __init__(self, fmt: str, ax: Axes, vertical: bool) -> None:
        super().__init__(6, prune="both")
        self._fmt, self._ax, self._vertical = fmt, ax, vertical
        self._size = FontProperties(size=TICK_SIZE).get_size_in_points()

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        box = self._ax.bbox  # display pixels, once the layout has placed the map
        along = (box.height if self._vertical else box.width) * 72 / self._ax.figure.dpi
        chars = max(len(self._fmt.format(v)) for v in (vmin, vmax))
        # a label's length (0.6 em a character) and as much again between two labels
        self.set_params(nbins=max(1, min(6, int(along // (1.2 * self._size * chars)))))
        return super().tick_values(vmin, vmax)


def _coordinates(ax: Axes, crs: CRS | None) -> None:
    if crs is not None and crs.is_geographic:
        names, fmt = ("longitude (°)", "latitude (°)"), "{:.4f}"
    elif crs is not None:
        unit = linear_unit(crs)
        names, fmt = (f"easting ({unit})", f"northing ({unit})"), "{:,.0f}"
    else:
        names, fmt = ("x (units unknown)", "y (units unknown)"), "{:,.0f}"
    for axis, vertical in ((ax.xaxis, False), (ax.yaxis, True)):
        axis.set_major_locator(_FittingLocator(fmt, ax, vertical))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt.format(v)))
    ax.tick_params(labelsize=TICK_SIZE)
    ax.tick_params(axis="y", labelrotation=90)
    for label in ax.get_yticklabels():
        label.set_verticalalignment("center")
    ax.set_xlabel(f"{names[0]} · CRS {crs_name(crs)}", fontsize="small")
    ax.set_ylabel(names[1], fontsize="small")
    ax.grid(color="white", alpha=0.35, linewidth=0.6)


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(step * power for step in NICE_STEPS if step * power <= metres)


def _scale_bar(ax: Axes, grid: MapGrid) -> None:
    """A bar of a round ground length: a CRS unit measured at the map's middle
    (``metres_per_unit``: in Web Mercator a unit is 1/cos(latitude) of a ground metre). Above
    the map's top left corner, as the north arrow is right of its top right: inside, they hid
    the outlines and numbers under them, on a flat strip (4000 × 120 px) a whole end of it."""
    if grid.crs is None:
        return
    per_unit = metres_per_unit(grid.crs, *grid.centre)[0]
    left, right = grid.extent[:2]
    metres = nice_length((right - left) * per_unit / 4)
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    length = metres / per_unit
    # a 120th of the map's height, but no thicker than a 12th of its length: a tall strip's
    # bar was drawn as a square
    thickness = min((grid.extent[3] - grid.extent[2]) / 120, length / 12 / _aspect(grid))
    above = _outside(ax, 0, MARGIN)
    bar = AnchoredSizeBar(ax.transData, length, label, "lower left", pad=0, borderpad=0, sep=4,
                          color="black", frameon=False, size_vertical=thickness,
                          bbox_to_anchor=(0, 1), bbox_transform=above)
    ax.add_artist(bar)


def _outside(ax: Axes, x: float, y: float) -> Transform:
    """The axes' fractions moved by ``x``, ``y`` points: places beside the map's frame."""
    return ax.transAxes + ScaledTranslation(x / 72, y / 72, ax.figure.dpi_scale_trans)


def _north_arrow(ax: Axes, grid: MapGrid) -> None:
    """An arrow to true north (grid north differs from it away from a projection's centre)."""
    if grid.crs is None:
        return
    x, y = grid.centre
    lon, lat = transform_points(grid.crs, WGS84, [x], [y])
    north_lat = min(lat[0] + 0.001, 89.9999)
    nx, ny = transform_points(WGS84, grid.crs, lon, [north_lat])
    angle = math.atan2(nx[0] - x, ny[0] - y)
    dx, dy = math.sin(angle), math.cos(angle)
    # right of the map's top right corner, clear of a number written on the frame's edge and
    # of the scale bar above the map, however narrow the map is
    tip = _outside(ax, MARGIN + 8, -12)
    ax.annotate("", xy=(1, 1), xycoords=tip, xytext=(-ARROW * dx, -ARROW * dy),
                textcoords="offset points",
                arrowprops={"facecolor": "white", "edgecolor": "black", "width": 5,
                            "headwidth": 14, "headlength": 12, "linewidth": 1})
    ax.annotate("N", xy=(1, 1), xycoords=tip, xytext=(9 * dx, 9 * dy),
                textcoords="offset points", ha="center", va="center", fontsize=12,
                fontweight="bold")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Rasters without a georeference are drawn on their pixel grid without a warning, and
    an image whose nodata value overrides an alpha band (GDAL's reading) is drawn so silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        warnings.simplefilter("ignore", NodataShadowWarning)
        yield


def backdrop_picture(image: str | None, prob_path: Path, grid: MapGrid
                     ) -> tuple[np.ndarray, str, str]:
    """The picture under the outlines, a short label of it, and why it is not the imagery
    (empty when it is)."""
    if image:
        try:
            picture = rgb_preview(imagery(image, grid))
            return with_nodata(picture, grid.valid), f"imagery: {Path(image).name}", ""
        except (RasterioError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            why = f"the imagery {image} could not be read ({reason})"
    else:
        why = ("the input image is not recorded in the outputs "
               "(slidemap report DIR --image IMAGE draws it)")
    return (with_nodata(probability_backdrop(prob_path, grid), grid.valid),
            "background: landslide probability, darker = more likely", why)
