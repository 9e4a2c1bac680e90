"""Slope from synthetic planes of known angle, and pixel sizes in metres."""

import math

import numpy as np
import pytest
from rasterio.crs import CRS

from slidemap.data.terrain import pixel_size_m, slope_degrees


@pytest.mark.parametrize("angle", [0.0, 10.0, 30.0, 45.0, 60.0])
@pytest.mark.parametrize("pixel", [(0.5, 0.5), (2.0, 3.0)])
def test_slope_of_a_plane_is_its_angle(angle: float, pixel: tuple[float, float]) -> None:
    rows, cols = np.mgrid[0:20, 0:20].astype(np.float64)
    # A plane rising along a diagonal direction: gradient magnitude = tan(angle).
    gx, gy = math.tan(math.radians(angle)) * np.array([0.6, 0.8])
    dem = gx * cols * pixel[0] + gy * rows * pixel[1]
    slope = slope_degrees(dem, pixel)
    assert slope.shape == dem.shape
    np.testing.assert_allclose(slope[1:-1, 1:-1], angle, atol=1e-6)


def test_slope_keeps_nan_holes_and_band_axis() -> None:
    dem = np.zeros((1, 10, 10), dtype=np.float32)
    dem[0, 5, 5] = np.nan
    slope = slope_degrees(dem, (1.0, 1.0))
    assert slope.shape == (1, 10, 10)
    assert np.isnan(slope[0, 4:7, 4:7]).all()
    assert np.isfinite(slope[0, 0:3, 0:3]).all()


def test_pixel_size_in_metres_for_geographic_crs() -> None:
    dx, dy = pixel_size_m(CRS.from_epsg(4326), (1e-5, 1e-5), latitude=60.0)
    assert dy == pytest.approx(1.112, rel=1e-3)
    assert dx == pytest.approx(dy * 0.5, rel=1e-6)
    assert pixel_size_m(CRS.from_epsg(32647), (0.5, 0.5)) == (0.5, 0.5)
