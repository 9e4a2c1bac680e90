"""Slope and relief from synthetic terrain of known shape, and pixel sizes in metres."""

import math

import numpy as np
import pytest
from factories import web_mercator, web_mercator_scale
from rasterio.crs import CRS

from slidemap.data.terrain import (
    GRID_SCALE_TOLERANCE,
    ground_scales,
    laplacian_curvature,
    metres_per_unit,
    pixel_size_m,
    relief,
    slope_degrees,
)


@pytest.mark.parametrize("angle", [0.0, 10.0, 30.0, 45.0, 60.0])
@pytest.mark.parametrize("pixel", [(0.5, 0.5), (2.0, 3.0)])
def test_slope_of_a_plane_is_its_angle(angle: float, pixel: tuple[float, float]) -> None:
    rows, cols = np.mgrid[0:20, 0:20].astype(np.float64)
    # A plane rising along a diagonal direction: gradient magnitude = tan(angle).
    gx, gy = math.tan(math.radians(angle)) * np.array([0.6, 0.8])
    dem = gx * cols * pixel[0] + gy * rows * pixel[1]
    slope = slope_degrees(dem, pixel)
    curvature = laplacian_curvature(dem, pixel)
    assert slope.shape == dem.shape
    # the border too: a neighbour past the edge continues the plane (a copy of the edge halved
    # the border's slope and gave it a curvature)
    np.testing.assert_allclose(slope, angle, atol=1e-6)
    np.testing.assert_allclose(curvature, 0, atol=1e-6)


def test_slope_keeps_nan_holes_and_band_axis() -> None:
    """A hole stays a hole and its neighbours keep a value (a missing neighbour takes the
    centre's elevation), so terrain is valid exactly where the DEM is."""
    dem = np.zeros((1, 10, 10), dtype=np.float32)
    dem[0, 5, 5] = np.nan
    slope = slope_degrees(dem, (1.0, 1.0))
    curvature = laplacian_curvature(dem, (1.0, 1.0))
    assert slope.shape == curvature.shape == (1, 10, 10)
    np.testing.assert_array_equal(np.isnan(slope), np.isnan(dem))
    np.testing.assert_array_equal(np.isnan(curvature), np.isnan(dem))
    assert (slope[np.isfinite(slope)] == 0).all() and (curvature[np.isfinite(dem)] == 0).all()


def test_pixel_size_in_metres_for_geographic_crs() -> None:
    """On the WGS 84 ellipsoid: at 60° N a degree of latitude is 111.41 km and one of longitude
    55.80 km (a sphere gives 111.19 km and exactly half of it)."""
    dx, dy = pixel_size_m(CRS.from_epsg(4326), (1e-5, 1e-5), (10.0, 60.0))
    assert dy == pytest.approx(1.11412, rel=1e-5)
    assert dx == pytest.approx(0.55800, rel=1e-5)
    assert pixel_size_m(CRS.from_epsg(32647), (0.5, 0.5), (500_000.0, 3_400_000.0)) == (0.5, 0.5)


def test_relief_of_a_plane_is_zero_away_from_the_edges() -> None:
    rows, cols = np.mgrid[0:30, 0:30].astype(np.float64)
    plane = 3000.0 + 0.7 * cols - 0.3 * rows
    out = relief(plane, 4)
    np.testing.assert_allclose(out[4:-4, 4:-4], 0.0, atol=1e-3)
    # Clipped at the edge the square leans inwards: the low column 0 lies below its mean.
    assert (out[10:20, 0] < -1.0).all()


def test_relief_ignores_a_shift_of_the_whole_dem_and_sees_peaks() -> None:
    rng = np.random.default_rng(0)
    dem = rng.normal(0.0, 5.0, (40, 50))
    dem[20, 25] += 100.0  # a peak
    moved = relief(dem + 2500.0, 3)
    np.testing.assert_allclose(moved, relief(dem, 3), atol=1e-3)
    assert moved[20, 25] > 80.0
    assert relief(-dem, 3)[20, 25] < -80.0


def test_relief_leaves_nan_out_of_every_mean() -> None:
    dem = np.full((1, 12, 12), 100.0, dtype=np.float32)
    dem[0, :, 6:] = np.nan
    dem[0, 0, 0] = 112.0
    out = relief(dem, 2)
    assert out.shape == (1, 12, 12)
    assert np.isnan(out[0, :, 6:]).all()
    # (0, 0)'s square holds itself and 8 pixels of 100 m (rows 0-2 × cols 0-2; the edge clips).
    assert out[0, 0, 0] == pytest.approx(112.0 - (112.0 + 8 * 100.0) / 9, abs=1e-4)
    assert np.isnan(relief(np.full((4, 4), np.nan), 1)).all()


def test_web_mercator_pixels_are_sized_on_the_ground() -> None:
    """A Web Mercator 'metre' is about 1/cos(latitude) ground metres: 0.585 units at 31° N are
    a 0.5 m ground pixel, not a 0.585 m one."""
    lat = 31.1
    res = 0.5 / math.cos(math.radians(lat))
    dx, dy = pixel_size_m(CRS.from_epsg(3857), (res, res), web_mercator(98.7, lat))
    per_x, per_y = web_mercator_scale(lat)
    assert (dx, dy) == pytest.approx((res * per_x, res * per_y), rel=1e-7)
    assert (dx, dy) == pytest.approx((0.5, 0.5), rel=1e-2)  # the ellipsoid's part: < 0.5 %
    assert metres_per_unit(CRS.from_epsg(3857), *web_mercator(10.0, 60.0)) == pytest.approx(
        web_mercator_scale(60.0), rel=1e-7)


def test_grids_within_the_tolerance_keep_their_linear_unit() -> None:
    """UTM (scale 0.9996 to 1.0004 in its zone) and a US-feet state plane keep grid units
    exactly; so does a point PROJ cannot transform. 1100 km off UTM's central meridian (scale
    1.0145) a unit is measured on the ground."""
    utm = CRS.from_epsg(32647)
    assert pixel_size_m(utm, (0.5, 0.5), (469_200.0, 3_446_200.0)) == (0.5, 0.5)
    assert metres_per_unit(utm, 800_000.0, 3_446_200.0) == (1.0, 1.0)
    assert metres_per_unit(utm, 1e12, 1e12) == (1.0, 1.0)
    feet = CRS.from_epsg(2227)  # California zone 3, US survey feet
    unit = feet.linear_units_factor[1]
    assert metres_per_unit(feet, 6_000_000.0, 2_100_000.0) == (unit, unit)
    far, _ = ground_scales(utm, [1_600_000.0], [3_446_200.0])
    assert far[0] < 1 - GRID_SCALE_TOLERANCE
    assert far[0] == pytest.approx(1 / 1.0145, rel=2e-3)
