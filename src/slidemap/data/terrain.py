"""Terrain derivatives of a DEM, and the ground size of a CRS unit: pixel sizes in metres also
for geographic CRSs and for projections whose grid metre is not a ground metre (Web Mercator)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import ArrayLike
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform, transform_bounds

from slidemap.data.names import DatasetName
from slidemap.errors import SlidemapError

Box = tuple[int, int]  # a box's radius in pixels: (rows, columns) either side of its centre

WGS84_A = 6_378_137.0  # WGS 84 semi-major axis, metres
WGS84_E2 = 6.694379990141317e-3  # WGS 84 first eccentricity squared
# Where a projection's ground scale is within this of its linear unit, the unit is taken as a
# ground metre, as landslide inventories do in UTM and national grids (grid area: their scale
# error is a few parts in 10^4), so their figures are the grid's. Beyond it (Web Mercator: 1/cos
# of the latitude, 17 % at 31° N; world projections) the grid unit is no ground measure and the
# local ground scale is used.
GRID_SCALE_TOLERANCE = 0.01
SCALE_STEP = 1.0  # CRS units: the step whose ground length measures a projection's local scale

FOOT_M = 0.3048
US_SURVEY_FOOT_M = 1200 / 3937
# a DEM band's unit (GDAL's unit type, lower case) and the metres in one of it
ELEVATION_UNITS_M = {
    "": 1.0, "m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0,
    "ft": FOOT_M, "foot": FOOT_M, "feet": FOOT_M, "international foot": FOOT_M,
    "us survey foot": US_SURVEY_FOOT_M, "us-ft": US_SURVEY_FOOT_M, "ftus": US_SURVEY_FOOT_M,
    "ft(us)": US_SURVEY_FOOT_M, "foot_us": US_SURVEY_FOOT_M,
    "dm": 0.1, "cm": 0.01, "mm": 0.001, "km": 1000.0,
}
METRE_NAMES = ("m", "metre", "metres", "meter", "meters")  # first words of "m a.s.l." and kin


def crs_name(crs: CRS | None) -> str:
    """``WGS 84 / UTM zone 47N (EPSG:32647)``, or what can be said without a CRS."""
    if crs is None:
        return "none (no scale bar or north arrow can be drawn)"
    found = re.match(r'\s*\w+\["([^"]+)"', crs.to_wkt())
    name = found.group(1) if found else crs.to_string()
    code = epsg_code(crs)
    return f"{name} (EPSG:{code})" if code else name


def bounds_in(source: CRS, target: CRS, bounds: Sequence[float] | np.ndarray
              ) -> tuple[float, float, float, float] | None:
    """``bounds`` (west, south, east, north) in ``source`` taken into ``target``, densified
    along the edges; None where PROJ knows no operation between them (a local, engineering CRS,
    which has no datum, and any other), where reads warped across them would each fail."""
    try:
        with rasterio.Env():  # in an Env GDAL raises PROJ's failure without also printing it
            west, south, east, north = transform_bounds(source, target, *bounds)
    except CPLE_BaseError:
        return None
    return west, south, east, north


def epsg_code(crs: CRS) -> int | None:
    """The EPSG code of ``crs`` if it is that EPSG CRS, else None. ``to_epsg`` alone matches
    loosely and takes the first of equal candidates: a transverse Mercator on an unnamed datum
    of the WGS 84 ellipsoid came out as EPSG:23867 (DGN95 / UTM 47N), a CRS it is not."""
    code = crs.to_epsg()
    return code if code is not None and CRS.from_epsg(code) == crs else None


def pixel_size_m(crs: CRS, res: tuple[float, float], at: tuple[float, float]
                 ) -> tuple[float, float]:
    """(dx, dy) of one pixel in metres at ``at`` ((x, y) in the CRS), as
    :func:`metres_per_unit` sizes a CRS unit there."""
    per_x, per_y = metres_per_unit(crs, *at)
    return abs(res[0]) * per_x, abs(res[1]) * per_y


def bounds_centre(bounds: tuple[float, float, float, float]) -> tuple[float, float]:
    """(x, y) of the centre of (west, south, east, north) bounds (rasterio's order)."""
    west, south, east, north = bounds
    return (west + east) / 2, (south + north) / 2


def metres_per_unit(crs: CRS, x: float, y: float) -> tuple[float, float]:
    """Ground metres per CRS unit along x and along y at the point (x, y); see
    :func:`ground_scales`."""
    per_x, per_y = ground_scales(crs, [x], [y])
    return float(per_x[0]), float(per_y[0])


def ground_scales(crs: CRS, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Ground metres per CRS unit along x and along y at each point (x, y): the one rule by
    which pixel sizes, areas, lengths and scale bars are measured.

    Degrees on the WGS 84 ellipsoid (a degree of latitude is the meridian's radius M times
    π/180, one of longitude the prime vertical's N cos φ: as pyproj.Geod and QGIS measure; a
    sphere of mean radius gave areas 0.45 % large at the equator and 0.72 % small at 69° N);
    a projection's linear unit where its local ground scale is within
    ``GRID_SCALE_TOLERANCE`` of it, the local ground scale on the WGS 84 ellipsoid elsewhere (or
    where it cannot be measured: points outside the projection's domain); 1 for a CRS that is
    neither (an engineering grid).
    """
    xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if crs.is_geographic:
        phi = np.radians(ys)
        meridional, prime_vertical = _ellipsoid_radii(phi)
        return (prime_vertical * np.cos(phi) * math.pi / 180.0,
                meridional * math.pi / 180.0)
    factor = float(crs.linear_units_factor[1]) if crs.is_projected else 1.0
    grid = np.full(xs.shape, factor)
    local = _ellipsoid_scales(crs, xs, ys) if crs.is_projected else None
    if local is None:
        return grid, grid.copy()
    per_x, per_y = local
    measured = np.isfinite(per_x) & np.isfinite(per_y) & (per_x > 0) & (per_y > 0)
    near = (np.abs(per_x / factor - 1) <= GRID_SCALE_TOLERANCE) & (
        np.abs(per_y / factor - 1) <= GRID_SCALE_TOLERANCE)
    keep = near | ~measured
    return np.where(keep, grid, per_x), np.where(keep, grid, per_y)


def _ellipsoid_scales(crs: CRS, xs: np.ndarray, ys: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground metres per unit along x and y at each point: steps of ``SCALE_STEP`` units taken
    to WGS 84 longitude/latitude and measured with the ellipsoid's meridional (M) and
    prime-vertical (N) radii at their mean latitude; None when PROJ cannot transform them."""
    count = xs.size
    step_x = np.concatenate([xs, xs + SCALE_STEP, xs])
    step_y = np.concatenate([ys, ys, ys + SCALE_STEP])
    try:
        lon, lat = transform(crs, "EPSG:4326", step_x.tolist(), step_y.tolist())
    except (CPLE_BaseError, RasterioError, ValueError):
        return None
    lons = np.radians(np.reshape(lon, (3, count)))
    lats = np.radians(np.reshape(lat, (3, count)))
    with np.errstate(invalid="ignore", over="ignore"):
        return (_ellipsoid_distance(lons[0], lats[0], lons[1], lats[1]) / SCALE_STEP,
                _ellipsoid_distance(lons[0], lats[0], lons[2], lats[2]) / SCALE_STEP)


def _ellipsoid_distance(lon0: np.ndarray, lat0: np.ndarray, lon1: np.ndarray,
                        lat1: np.ndarray) -> np.ndarray:
    """Metres between nearby points (radians) on the WGS 84 ellipsoid:
    distance² = (M·dφ)² + (N·cos φ·dλ)² at the mean latitude φ."""
    phi = (lat0 + lat1) / 2
    meridional, prime_vertical = _ellipsoid_radii(phi)
    dlon = (lon1 - lon0 + math.pi) % (2 * math.pi) - math.pi  # across the antimeridian
    return np.hypot(meridional * (lat1 - lat0), prime_vertical * np.cos(phi) * dlon)


def _ellipsoid_radii(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The WGS 84 ellipsoid's meridional (M) and prime-vertical (N) radii of curvature, in
    metres, at latitudes ``phi`` (radians)."""
    w = 1 - WGS84_E2 * np.sin(phi) ** 2
    return WGS84_A * (1 - WGS84_E2) / w ** 1.5, WGS84_A / np.sqrt(w)


def elevation_to_metres(dem: rasterio.DatasetReader, name: DatasetName) -> tuple[float, float]:
    """(scale, offset) that turn the DEM's stored values into metres: its GDAL scale and offset
    (an int16 DEM in decimetres stores 0.1), its band's unit (feet are not metres), else its
    vertical CRS's unit, and the direction of its vertical axis (depths count down). Read raw,
    such a DEM gives slopes and relief several times too steep or too flat, or upside down, and
    a map that looks fine; a unit that cannot be converted, or a scale of 0, is refused."""
    scale = 1.0 if dem.scales[0] is None else float(dem.scales[0])
    offset = 0.0 if dem.offsets[0] is None else float(dem.offsets[0])
    unit = (dem.units[0] or "").strip()
    metres = _unit_metres(unit) if unit else vertical_unit_metres(dem.crs)
    if metres is None:
        raise SlidemapError(f"DEM {name} gives its elevations in {unit!r}, a unit slidemap does "
                            "not know: convert them to metres and set the unit (gdal_calc.py, "
                            "then gdal_edit.py -units m)")
    if not (math.isfinite(scale) and scale != 0 and math.isfinite(offset)):
        raise SlidemapError(f"DEM {name} has a scale of {scale} and an offset of {offset}: set "
                            "ones that turn its values into elevations (gdal_edit.py -scale "
                            "-offset)")
    sign = -1.0 if counts_depth(dem.crs) else 1.0
    return sign * scale * metres, sign * offset * metres


def vertical_unit_metres(crs: CRS | None) -> float:
    """Metres in one unit of ``crs``'s vertical CRS (NAVD88 height (ftUS): 0.3048006), 1 for a
    CRS without one. A GeoTIFF reports that unit as its band's, but a VRT over such tiles
    declares none unless its bands name one: its feet were read as metres, slopes 3.3 times too
    steep and a map that looked fine."""
    found = re.search(r'UNIT\["(?:[^"]|"")*",\s*([0-9.eE+-]+)', _vertical_wkt(crs))
    return float(found.group(1)) if found else 1.0


def counts_depth(crs: CRS | None) -> bool:
    """Whether ``crs`` is compound with a vertical CRS whose axis points down (MSL depth,
    EPSG:5715): its values are depths, and read as heights its ridges are valleys."""
    return re.search(r'AXIS\["[^"]*",\s*DOWN\]', _vertical_wkt(crs)) is not None


def _vertical_wkt(crs: CRS | None) -> str:
    """The WKT1 of ``crs``'s vertical CRS (its ``VERT_CS[...]`` to the end), "" where it has
    none."""
    wkt = crs.to_wkt() if crs is not None else ""
    return wkt[wkt.find("VERT_CS["):] if "VERT_CS[" in wkt else ""


def horizontal_crs(crs: CRS) -> CRS:
    """The horizontal part of a compound CRS (UTM 47N of UTM 47N + EGM96 height), ``crs``
    itself otherwise: a DEM on the image's grid whose CRS adds a vertical datum is on that
    grid, and warping it anyway moved its nodata edge on decimated reads."""
    wkt = crs.to_wkt()
    head = re.match(r'COMPD_CS\["(?:[^"]|"")*",', wkt)
    if head is None:
        return crs
    depth = 0
    for token in re.finditer(r'"(?:[^"]|"")*"|[\[\]]', wkt[head.end():]):
        depth += {"[": 1, "]": -1}.get(token.group(), 0)
        if token.group() == "]" and depth == 0:
            return CRS.from_wkt(wkt[head.end():head.end() + token.end()])
    return crs


def eight_bit_unitless(dem: rasterio.DatasetReader) -> bool:
    """Whether the DEM's values are 8-bit and it declares neither a unit nor a scale or offset
    that says how they are elevations."""
    return (np.dtype(dem.dtypes[0]).itemsize == 1 and not (dem.units[0] or "").strip()
            and dem.scales[0] in (None, 1.0) and dem.offsets[0] in (None, 0.0))


def eight_bit_elevations(dem: rasterio.DatasetReader, name: DatasetName) -> str | None:
    """A one-line warning for an 8-bit DEM that declares neither a unit nor a scale or offset:
    256 whole steps are far likelier the grey levels of an image (a photo or hillshade passed as
    --dem) than elevations, and slope and relief read from them give a map that looks fine.
    None for any other DEM (int16, uint16, float), and for an 8-bit one whose unit, scale or
    offset says it holds elevations."""
    if not eight_bit_unitless(dem):
        return None
    return (f"DEM {name} is an 8-bit raster ({dem.dtypes[0]}) with no unit: more likely an image's "
            "grey levels than elevations, yet read as metres; pass the elevation raster, or "
            "declare what it holds (gdal_edit.py -units m, or -scale and -offset for a "
            "quantised DEM)")


def _unit_metres(unit: str) -> float | None:
    """Metres in one ``unit`` (GDAL's free-text unit type): its whole name, else its first word
    ("m a.s.l.", "metres above sea level"); None for a unit not known."""
    name = unit.lower()
    if name in ELEVATION_UNITS_M:
        return ELEVATION_UNITS_M[name]
    first = name.split()[0] if name.split() else ""
    return ELEVATION_UNITS_M.get(first) if first in METRE_NAMES else None


def neighbours(z: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The eight neighbours of every pixel of ``z`` (H, W), keyed by (row, column) offset.

    Past the array's edge a neighbour is extrapolated along the line through the centre and
    its opposite neighbour (2·centre − opposite, as gdaldem -compute_edges does): a copy of the
    edge halved the slope of the scene's border pixels (14° on a 27° plane) and gave them a
    curvature of ±100 on a plane. A NaN neighbour (a DEM's nodata) takes the centre pixel's own
    value, so every stencil is defined wherever the centre is: a pixel's terrain, and so
    whether it is valid, does not depend on whether its neighbour has data, in a window or in
    a whole scene.
    """
    p = np.pad(z, 1, mode="reflect", reflect_type="odd")
    h, w = z.shape
    out = {}
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                n = p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
                out[dr, dc] = np.where(np.isnan(n), z, n)
    return out


def axes_cosine(transform: Affine, per_unit: tuple[float, float]) -> float:
    """Cosine of the angle on the ground between a grid's column step and its row step
    (``per_unit``: ground metres per CRS unit along x and y): 0 on a north-up or rotated grid.
    A sheared geotransform's axes are oblique, and slope and curvature read along them as if
    square were off (a 26.57° plane 28.32° at a shear of 0.5)."""
    column = np.array([transform.a * per_unit[0], transform.d * per_unit[1]])
    row = np.array([transform.b * per_unit[0], transform.e * per_unit[1]])
    return float(column @ row / (np.hypot(*column) * np.hypot(*row)))


def slope_degrees(dem: np.ndarray, pixel_size: tuple[float, float],
                  axes_cos: float = 0.0) -> np.ndarray:
    """Slope in degrees by Horn's 3×3 method; NaN exactly where the DEM is NaN.

    ``dem`` is (H, W) or (1, H, W) in metres; ``pixel_size`` is (dx, dy) in metres, the ground
    lengths of a column and a row step, and ``axes_cos`` the cosine of the angle between them
    (:func:`axes_cosine`; 0 where they are square). Neighbours past the edge or without data are
    filled as :func:`neighbours` says, so pass a window with a one-pixel halo when edges matter.
    """
    squeeze = dem.ndim == 3
    z = np.asarray(dem[0] if squeeze else dem, dtype=np.float64)
    n = neighbours(z)
    a, b, c = n[-1, -1], n[-1, 0], n[-1, 1]
    d, f = n[0, -1], n[0, 1]
    g, h, i = n[1, -1], n[1, 0], n[1, 1]
    dx, dy = pixel_size
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * dx)
    dzdy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8 * dy)
    # the rates along two oblique unit axes, as the rates along the first and its normal
    normal = (dzdy - axes_cos * dzdx) / math.sqrt(1 - axes_cos**2)
    slope = np.degrees(np.arctan(np.hypot(dzdx, normal))).astype(np.float32)
    slope[np.isnan(z)] = np.nan  # Horn's stencil skips the centre; a hole stays a hole
    return slope[None] if squeeze else slope


def relief_radii_m(relief_m: float | tuple[float, ...] | None) -> tuple[float, ...]:
    """``inputs.relief_m`` (one radius, several, or None) as a tuple of radii in metres."""
    if relief_m is None:
        return ()
    return tuple(relief_m) if isinstance(relief_m, tuple | list) else (float(relief_m),)


def radii_px(relief_m: float | tuple[float, ...] | None, roughness_m: float | None,
             step_m: tuple[float, float]) -> tuple[list[Box], Box]:
    """(relief boxes, roughness box) in working pixels of (dx, dy) ``step_m`` metres ((0, 0):
    no roughness): how far around a window its terrain descriptors reach."""
    radii = [box_radius(r, step_m) for r in relief_radii_m(relief_m)]
    return radii, box_radius(roughness_m, step_m) if roughness_m else (0, 0)


def box_radius(metres: float, step_m: tuple[float, float]) -> Box:
    """(rows, columns) of pixels of (dx, dy) ``step_m`` metres that a radius of ``metres`` spans
    along each pixel axis: one radius in pixels from their mean size made a box of "32 m" on
    1 m × 2 m pixels 21 m across the columns and 42 m down the rows."""
    dx, dy = step_m
    return max(1, round(metres / dy)), max(1, round(metres / dx))


def reach_px(boxes: Sequence[Box]) -> Box:
    """(rows, columns) the largest of ``boxes`` reaches around a pixel ((0, 0) for none)."""
    return max([0, *(b[0] for b in boxes)]), max([0, *(b[1] for b in boxes)])


def _box(radius: int | Box) -> Box:
    """A radius in pixels, one for both axes or (rows, columns), as (rows, columns)."""
    return (radius, radius) if isinstance(radius, int) else radius


class BoxSums:
    """Summed-area tables of a DEM's elevation (centred on its valid mean), of its square and of
    its valid pixels, each built once and edge-padded by the largest radius wanted: a box sum
    at any radius up to it is then four slices, no gather, so relief at several radii and
    roughness read from one window share them. ``dem`` is (H, W) or (1, H, W) in metres, NaN
    where not valid; radii are in pixels, one for both axes or (rows, columns).

    A box as wide as the array already covers all of it, so the padding stops there: a
    radius of kilometres (a model file may ask for 100 km) costs tables the size of the window,
    not of the radius."""

    def __init__(self, dem: np.ndarray, max_radius: int | Box) -> None:
        self.centred, self.finite = _centred(dem[0] if dem.ndim == 3 else dem)
        self.max_radius = _box(max_radius)
        size = max(self.finite.shape)
        self._pad = min(self.max_radius[0], size), min(self.max_radius[1], size)
        self._tables: dict[str, np.ndarray] = {}

    def box(self, name: str, radius: int | Box) -> np.ndarray:
        """Sum of ``name`` (centred, square or count) over the (2·rows + 1) × (2·columns + 1)
        box of ``radius`` around each pixel, clipped at the edges."""
        rows, cols = _box(radius)
        if not (0 <= rows <= self.max_radius[0] and 0 <= cols <= self.max_radius[1]):
            raise ValueError(f"radius {radius} is outside 0..{self.max_radius}")
        table = self._tables.get(name)
        if table is None:
            values = {"centred": lambda: self.centred, "square": lambda: self.centred**2,
                      "count": lambda: self.finite.astype(np.float64)}[name]()
            table = np.pad(values, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
            # row k of the padded table is row clip(k - pad, 0, h) of the table
            pad_r, pad_c = self._pad
            table = self._tables[name] = np.pad(table, ((pad_r, pad_r), (pad_c, pad_c)),
                                                mode="edge")
        h, w = self.finite.shape
        rows, cols = min(rows, self._pad[0]), min(cols, self._pad[1])  # wider: the whole array
        top, bottom = self._pad[0] - rows, self._pad[0] + rows + 1
        left, right = self._pad[1] - cols, self._pad[1] + cols + 1
        return (table[bottom:bottom + h, right:right + w] - table[top:top + h, right:right + w]
                - table[bottom:bottom + h, left:left + w] + table[top:top + h, left:left + w])


def relief(dem: np.ndarray | BoxSums, radius: int | Box) -> np.ndarray:
    """Elevation above the mean valid elevation of the box of ``radius`` px (one for both axes,
    or (rows, columns)) around each pixel.

    A topographic position index: positive on ridges and the upper parts of slopes, negative in
    valley floors. Unlike elevation it does not change when a whole DEM is shifted (another
    vertical datum, a site further up the valley), so a model that reads it cannot learn "low
    ground = landslide" from one valley's altitude. NaN pixels are left out of every mean and stay
    NaN; boxes clipped by the array edge average what lies inside. ``dem`` is (H, W) or
    (1, H, W) (the result has the same shape, float32), or the :class:`BoxSums` of one (H, W).
    """
    squeeze = not isinstance(dem, BoxSums) and dem.ndim == 3
    sums = dem if isinstance(dem, BoxSums) else BoxSums(dem, radius)
    centred, finite = sums.centred, sums.finite
    if not finite.any():
        out = np.full(finite.shape, np.nan, dtype=np.float32)
        return out[None] if squeeze else out
    total = sums.box("centred", radius)
    count = sums.box("count", radius)
    out = (centred - total / np.maximum(count, 1.0)).astype(np.float32)
    out[~finite] = np.nan
    return out[None] if squeeze else out


def _centred(dem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elevation minus the mean of its valid pixels, 0 where not valid; the valid pixels), in
    float64: box sums of small centred values stay exact where raw elevations would not."""
    z = np.asarray(dem, dtype=np.float64)
    finite = np.isfinite(z)
    mean = z[finite].mean() if finite.any() else 0.0
    return np.where(finite, z - mean, 0.0), finite


def laplacian_curvature(dem: np.ndarray, pixel_size: tuple[float, float],
                        axes_cos: float = 0.0) -> np.ndarray:
    """Curvature of the surface (the negative Laplacian, Zevenbergen & Thorne), in 1/100 m.

    Positive on convex ground (crests, scarp tops), negative in concave ground (hollows, the
    deposits at a slope's foot); a constant added to the whole DEM leaves it unchanged. Edge
    pixels and neighbours without data are filled as :func:`neighbours` says (pass a window with
    a one-pixel halo); NaN stays NaN. ``dem`` is (H, W) or (1, H, W) in metres; ``pixel_size``
    is (dx, dy) in metres and ``axes_cos`` the cosine of the angle between the pixel axes, as
    for :func:`slope_degrees` (on oblique axes the Laplacian takes their cross derivative).
    """
    squeeze = dem.ndim == 3
    z = np.asarray(dem[0] if squeeze else dem, dtype=np.float64)
    n = neighbours(z)
    dx, dy = pixel_size
    d2x = (n[0, -1] + n[0, 1] - 2 * z) / dx**2
    d2y = (n[-1, 0] + n[1, 0] - 2 * z) / dy**2
    d2xy = (n[1, 1] - n[1, -1] - n[-1, 1] + n[-1, -1]) / (4 * dx * dy)
    out = (-100.0 * (d2x + d2y - 2 * axes_cos * d2xy) / (1 - axes_cos**2)).astype(np.float32)
    return out[None] if squeeze else out


def roughness(dem: np.ndarray | BoxSums, radius: int | Box) -> np.ndarray:
    """Standard deviation of the valid elevations in the box of ``radius`` px (one for both
    axes, or (rows, columns)) around each pixel, in metres: rough, broken ground (scarps,
    debris) against smooth slopes. Shifting the DEM leaves it unchanged; NaN pixels are left out
    and stay NaN. (H, W) or (1, H, W), float32, or the :class:`BoxSums` of one (H, W).
    """
    squeeze = not isinstance(dem, BoxSums) and dem.ndim == 3
    sums = dem if isinstance(dem, BoxSums) else BoxSums(dem, radius)
    finite = sums.finite
    if not finite.any():
        out = np.full(finite.shape, np.nan, dtype=np.float32)
        return out[None] if squeeze else out
    count = np.maximum(sums.box("count", radius), 1.0)
    mean = sums.box("centred", radius) / count
    variance = sums.box("square", radius) / count - mean**2
    out = np.sqrt(np.maximum(variance, 0.0)).astype(np.float32)
    out[~finite] = np.nan
    return out[None] if squeeze else out
