"""RGB previews, PNG overlays and georeferenced heat maps."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import rasterio
from matplotlib import colormaps
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine

from slidemap.errors import SlidemapError
from slidemap.explain import rgb_preview, save_heat_geotiff, save_overlay_png
from slidemap.explain.overlay import HEAT_COLOURS

GRID = Affine(0.5, 0.0, 600000.0, 0.0, -0.5, 2100000.0)  # 0.5 m pixels, north up


def test_preview_stretches_the_first_three_bands_and_ignores_outliers():
    ramp = np.linspace(0, 1000, 100).reshape(10, 10)
    image = np.stack([ramp, ramp * 2, ramp + 5, np.full_like(ramp, 7)])
    image[0, 0, 0] = 1e9  # one saturated pixel must not darken the rest
    rgb = rgb_preview(image)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].max() == 255 and rgb[..., 0].min() == 0
    assert 100 < rgb[5, 0, 0] < 155  # mid-ramp stays mid-grey
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])  # same ramp, same stretch


def test_preview_of_one_band_is_grey_and_nan_is_black():
    band = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    band[0, 3, 3] = np.nan
    rgb = rgb_preview(band)
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb[3, 3].tolist() == [0, 0, 0]
    assert rgb_preview(np.ones((3, 4, 4))).max() == 0  # a flat band has nothing to stretch


@pytest.mark.parametrize("rgb", [np.full((20, 30, 3), 128, np.uint8), np.full((20, 30, 3), 0.5)])
def test_overlay_png_is_written_and_readable(tmp_path, rgb):
    heat = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    path = tmp_path / "explain" / "cam.png"
    save_overlay_png(rgb, heat, path, title="Grad-CAM: decoder")
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels.shape[0] > 20
    assert [p.name for p in path.parent.iterdir()] == ["cam.png"]  # no temporary left


def test_overlay_png_draws_pixels_of_the_aspect_given(tmp_path):
    """A picture of pixels twice as tall as wide on the ground is drawn twice as tall."""
    heat = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (30, 1))
    rgb = np.full((30, 30, 3), 128, np.uint8)
    sizes = []
    for aspect in (1.0, 2.0):
        save_overlay_png(rgb, heat, tmp_path / f"{aspect}.png", aspect=aspect)
        with Image.open(tmp_path / f"{aspect}.png") as png:
            sizes.append(png.size)
    (width_1, height_1), (width_2, height_2) = sizes
    assert height_2 / width_2 > 1.6 * height_1 / width_1


def test_heat_colours_grow_lighter_with_the_heat():
    """CIE lightness rises with the value over the whole map (jet's fell after yellow, so
    0.65 and 1.0 looked alike in grey and to colour-blind readers)."""
    rgb = colormaps[HEAT_COLOURS](np.linspace(0, 1, 64))[:, :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > 0)


def test_overlay_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(SlidemapError, match="one size"):
        save_overlay_png(np.zeros((4, 4, 3)), np.zeros((4, 5)), tmp_path / "x.png")


def profile(height: int, width: int) -> dict:
    """A window's profile as read from a 3-band uint8 orthophoto, nodata 0."""
    return {
        "driver": "GTiff", "dtype": "uint8", "count": 3, "nodata": 0, "photometric": "RGB",
        "height": height, "width": width, "crs": CRS.from_epsg(32647),
        "transform": GRID,
    }


def test_heat_geotiff_keeps_crs_and_transform(tmp_path):
    heat = np.random.default_rng(0).random((6, 9)).astype(np.float32)
    heat[0, 0] = 0.0  # zero is a value here: nodata is NaN, not the image's 0
    path = tmp_path / "cam.tif"
    path.write_bytes(b"an older result")  # replaced, not appended to
    save_heat_geotiff(heat, path, profile(6, 9))
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32647
        assert src.transform == GRID
        assert src.count == 1 and src.dtypes == ("float32",) and np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(1), heat)
    assert [p.name for p in tmp_path.iterdir()] == ["cam.tif"]


def test_heat_geotiff_refuses_a_profile_of_another_size(tmp_path):
    with pytest.raises(SlidemapError, match="profile"):
        save_heat_geotiff(np.zeros((6, 9)), tmp_path / "cam.tif", profile(9, 6))
    assert not list(tmp_path.iterdir())


def test_pictures_get_the_umask_permissions_like_every_other_output(tmp_path):
    """explain's PNGs and GeoTIFFs were private (0600, the temporary file's mode) while the
    maps of predict beside them were readable by the group and others."""
    old = os.umask(0o022)
    try:
        save_overlay_png(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), tmp_path / "cam.png")
        save_heat_geotiff(np.zeros((6, 9)), tmp_path / "cam.tif", profile(6, 9))
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}
