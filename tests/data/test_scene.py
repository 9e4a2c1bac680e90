"""The data layer: DEM alignment across CRS and resolution, nodata, labels, windows."""


import re
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import rasterio
from affine import Affine
from factories import reproject_raster, write_raster
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import load_scene_arrays
from slidemap.data.scene import Scene
from slidemap.data.windows import context_window, grid_windows, random_windows
from slidemap.errors import SlidemapError, SlidemapWarning


@pytest.mark.parametrize(("crs", "scale"), [("EPSG:4326", 0.7), ("EPSG:32647", 0.5),
                                            ("EPSG:3857", 1.3)])
def test_dem_in_another_crs_lands_on_the_image_grid(tiny_scene, tmp_path, crs, scale) -> None:
    other = reproject_raster(tiny_scene["dem"], tmp_path / "dem_other.tif", crs, scale)
    with rasterio.open(tiny_scene["dem"]) as ds:
        truth = ds.read(1)
    with Scene(tiny_scene["image"], dem=other) as scene:
        sample = scene.read(Window(0, 0, 96, 96), (1, 2, 3), dem=True)
    assert sample["dem"].shape == (1, 96, 96)
    inner = (slice(12, 84), slice(20, 84))  # away from the nodata edge and the DEM border
    np.testing.assert_allclose(sample["dem"][0][inner], truth[inner], atol=0.1)
    assert not sample["valid"][:, :8].any()


def test_slope_is_read_with_the_scene_and_decimated(tiny_scene) -> None:
    # DSM rises 0.25 m per 0.5 m column and 0.1 m per 0.5 m row: slope = atan(hypot(.5, .2)).
    expected = np.degrees(np.arctan(np.hypot(0.5, 0.2)))
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as scene:
        full = scene.read(Window(16, 16, 64, 64), (1, 2, 3), slope=True)
        coarse = scene.read(Window(16, 16, 64, 64), (1, 2, 3), factor=4, slope=True)
    np.testing.assert_allclose(full["slope"][0], expected, atol=0.01)  # float32 DSM
    assert coarse["slope"].shape == (1, 16, 16)
    np.testing.assert_allclose(coarse["slope"][0], expected, atol=0.02)
    assert coarse["image"].shape == (3, 16, 16)


def test_labels_and_nodata_are_carried(tiny_scene) -> None:
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"], mask=tiny_scene["mask"]) as scene:
        sample = scene.read(Window(0, 0, 96, 96), (1, 2, 3), dem=True)
    assert set(np.unique(sample["mask"])) == {0, 1, 255}
    assert not sample["valid"][:, :8].any() and sample["valid"][:, 8:].all()
    assert np.isnan(sample["dem"][0, :, :8]).all()


@pytest.mark.parametrize("nodata", [None, 0, 255])
def test_label_raster_on_another_grid_keeps_its_classes(tiny_scene, tmp_path, nodata) -> None:
    # The scene's labels on a grid one metre larger each way; a nodata of 0 (gdal_rasterize
    # -a_nodata 0) once turned all background into ignore there, and only there.
    with rasterio.open(tiny_scene["mask"]) as ds:
        labels, grid = ds.read(1), ds.transform
    wider = np.pad(labels, 2)
    shifted = write_raster(tmp_path / "labels.tif", wider, nodata=nodata,
                           transform=grid @ Affine.translation(-2, -2))
    with Scene(tiny_scene["image"], mask=shifted) as scene:
        sample = scene.read(Window(0, 0, 96, 96), (1, 2, 3))
    np.testing.assert_array_equal(sample["mask"], labels)
    beyond = write_raster(tmp_path / "half.tif", labels[:, :48], nodata=nodata)
    with Scene(tiny_scene["image"], mask=beyond) as scene:  # ground it does not cover: ignore
        half = scene.read(Window(0, 0, 96, 96), (1, 2, 3), factor=2)["mask"]
    assert (half[:, 24:] == 255).all() and set(np.unique(half[:, 4:24])) == {0, 1}


def test_dem_that_does_not_overlap_is_refused(tiny_scene, tmp_path) -> None:
    from rasterio.transform import from_origin

    far = write_raster(tmp_path / "far.tif", np.zeros((10, 10), np.float32),
                       transform=from_origin(0.0, 10.0, 1.0, 1.0))
    with pytest.raises(SlidemapError, match="does not overlap"):
        Scene(tiny_scene["image"], dem=far)


def test_dem_of_part_of_the_image_warns_and_an_image_as_dem_is_refused(tiny_scene, tmp_path
                                                                        ) -> None:
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm, transform = src.read(1), src.transform
    half = write_raster(tmp_path / "half.tif", dsm[:, 48:].copy(),
                        transform=transform @ Affine.translation(48, 0))
    with pytest.warns(SlidemapWarning, match="covers only 50% of image"):
        Scene(tiny_scene["image"], dem=half).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        Scene(tiny_scene["image"], dem=tiny_scene["dem"]).close()
    with pytest.raises(SlidemapError, match="has 3 bands: pass a single-band elevation"):
        Scene(tiny_scene["image"], dem=tiny_scene["image"])


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_a_dem_with_an_alpha_band_is_read_with_its_alpha_as_nodata(tiny_scene, tmp_path,
                                                                    dtype: str) -> None:
    """A DEM of elevation + alpha (gdalwarp -dstalpha) was refused as having 2 bands, with
    advice that drops the alpha and so reads its nodata as elevation 0; it is read as the same
    DEM with NaN nodata."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = src.read(1)
    valid = np.isfinite(dsm)
    values = np.where(valid, dsm, 0).astype(dtype)
    opaque = np.iinfo(dtype).max if dtype == "uint16" else 255  # as gdalwarp -dstalpha writes
    alpha = write_raster(tmp_path / "alpha.tif", np.stack([values, valid * opaque])
                         .astype(dtype), alpha="YES")
    plain = write_raster(tmp_path / "plain.tif", np.where(valid, values, np.nan)
                         .astype(np.float32), nodata=float("nan"))
    window = Window(0, 0, 96, 96)
    with Scene(tiny_scene["image"], dem=alpha) as scene, \
            Scene(tiny_scene["image"], dem=plain) as reference:
        got = scene.read(window, (1, 2, 3), dem=True, slope=True)
        want = reference.read(window, (1, 2, 3), dem=True, slope=True)
    assert np.isnan(got["dem"][0][~valid]).all()
    for key in ("dem", "slope", "valid"):
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("alpha_after", ["float32 RGB", "RGB + NIR"])
def test_an_alpha_band_gdal_leaves_out_of_its_mask_is_nodata(tiny_scene, tmp_path,
                                                             alpha_after: str) -> None:
    """An alpha band GDAL's own mask ignores (a float one, as gdalwarp -dstalpha writes for a
    float scene; band 5 after RGB + NIR, as gdalbuildvrt -addalpha makes) let the transparent
    pixels be mapped as ground; they are nodata, as where the alpha is GDAL's mask."""
    with rasterio.open(tiny_scene["image"]) as src:
        rgb = src.read()
        valid = src.dataset_mask() > 0
    alpha = (valid * 255).astype(np.uint8)[None]
    if alpha_after == "float32 RGB":
        path = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha])
                            .astype(np.float32), photometric="RGB", alpha="YES")
    else:
        path = write_raster(tmp_path / "rgbna.tif", np.concatenate([rgb, rgb[:1], alpha]),
                            photometric="RGB")
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                              ColorInterp.undefined, ColorInterp.alpha]
    with Scene(path) as scene:
        got = scene.read(Window(0, 0, 96, 96), (1, 2, 3))["valid"]
        halved = scene.read(Window(0, 0, 96, 96), (1, 2, 3), factor=2)["valid"]
    np.testing.assert_array_equal(got, valid)
    np.testing.assert_array_equal(halved, valid[::2, ::2])


def test_a_dem_of_depths_is_read_as_heights(tiny_scene, tmp_path) -> None:
    """A DEM whose vertical CRS counts depth (MSL depth, its axis down) was read with its sign
    flipped: 3000 m of height became -3000 m, and ridges valleys."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = src.read(1)
    depth = write_raster(tmp_path / "depth.tif", -dsm, crs="EPSG:32647+5715", nodata=np.nan)
    height = write_raster(tmp_path / "height.tif", dsm, crs="EPSG:32647+5773", nodata=np.nan)
    window = Window(0, 0, 96, 96)
    with Scene(tiny_scene["image"], dem=depth) as scene, \
            Scene(tiny_scene["image"], dem=height) as reference:
        got = scene.read(window, (1, 2, 3), dem=True, relief_m=5.0)
        want = reference.read(window, (1, 2, 3), dem=True, relief_m=5.0)
    assert np.nanmin(got["dem"]) > 2900
    for key in ("dem", "relief"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-3)


def test_a_dem_in_a_compound_crs_on_the_image_grid_is_read_as_it_is(tiny_scene, tmp_path
                                                                     ) -> None:
    """A DEM in UTM + a vertical CRS on the image's UTM grid never counted as on the grid (the
    CRSs differ as wholes), so it was warped: decimated reads differed from the same DEM's
    without the vertical part (the sample's landslide 32,882 against 32,879 m²)."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = src.read(1)
    compound = write_raster(tmp_path / "compound.tif", dsm, crs="EPSG:32647+5773",
                            nodata=np.nan)
    window = Window(0, 0, 96, 96)  # its nodata edge too
    with Scene(tiny_scene["image"], dem=compound) as scene, \
            Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as reference:
        got = scene.read(window, (1, 2, 3), factor=4, dem=True, slope=True)
        want = reference.read(window, (1, 2, 3), factor=4, dem=True, slope=True)
    for key in ("dem", "slope"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize(("dtype", "unit", "warned"), [
    ("uint8", "", True), ("int8", "", True), ("uint8", "m", False), ("int16", "", False),
    ("uint16", "", False), ("int32", "", False)])
def test_an_8_bit_dem_without_a_unit_warns(tiny_scene, tmp_path, dtype: str, unit: str,
                                           warned: bool) -> None:
    """A grey image passed as --dem was read as metres without a word; 16- and 32-bit integer
    DEMs, and an 8-bit one that declares its unit, are read quietly."""
    values = (np.arange(96 * 96).reshape(96, 96) % 100 + 10).astype(dtype)
    dem = write_raster(tmp_path / "dem.tif", values)
    if unit:
        with rasterio.open(dem, "r+") as ds:
            ds.units = (unit,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Scene(tiny_scene["image"], dem=dem).close()
    messages = [str(w.message) for w in caught if issubclass(w.category, SlidemapWarning)]
    assert any(f"DEM {dem} is an 8-bit raster" in m for m in messages) == warned, messages


@pytest.mark.parametrize("transform", [
    Affine(0.5, 0.25, 5e5, 0.1, -0.5, 3.4e6),  # sheared
    Affine(0.5, 0, 5e5, 0, -0.5, 3.4e6) @ Affine.rotation(30),
    Affine(0.5, 0, 5e5, 0, -0.5, 3.4e6)])
def test_slope_and_curvature_are_those_of_the_ground_on_any_affine_grid(
        tmp_path, transform: Affine) -> None:
    """On a sheared grid (b, d not a rotation) the pixel axes are oblique on the ground, and
    reading them as square gave a 26.57° plane 28.32° dipping east and 24.60° dipping north,
    and a trough of curvature -2 one of -2.32."""
    rows, cols = np.mgrid[0:32, 0:32]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    x, y = x - 5e5, y - 3.4e6
    image = write_raster(tmp_path / "image.tif", np.full((3, 32, 32), 100, np.uint8),
                         transform=transform)
    inner = (slice(2, -2), slice(2, -2))
    for z, expected in ((0.5 * x, ("slope", 26.565)), (0.5 * y, ("slope", 26.565)),
                        (0.01 * x**2, ("curvature", -2.0))):
        dem = write_raster(tmp_path / "dem.tif", z.astype(np.float32), transform=transform)
        with Scene(image, dem=dem) as scene:
            got = scene.read(Window(0, 0, 32, 32), (1, 2, 3), slope=True, curvature=True)
        np.testing.assert_allclose(got[expected[0]][0][inner], expected[1], atol=0.02)


@pytest.mark.parametrize("dy", [1.0, 2.0])
def test_relief_and_roughness_span_their_metres_along_each_pixel_axis(tmp_path, dy) -> None:
    """On 1 m × 2 m pixels one radius in pixels from their mean size (1.5 m) made a box of
    "16 m" 11 m across the columns and 22 m down the rows: a trough along x had a relief of
    -0.44 m there and -0.91 m on square pixels over the same ground. A window's halo reaches
    as far along each axis, so a window still reads what the whole scene reads."""
    transform = Affine(1, 0, 5e5, 0, -dy, 3.4e6)
    height = round(64 / dy)
    rows, cols = np.mgrid[0:height, 0:64]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    image = write_raster(tmp_path / "image.tif", np.full((3, height, 64), 100, np.uint8),
                         transform=transform)
    trough = write_raster(tmp_path / "trough.tif", (0.01 * (x - 5e5) ** 2).astype(np.float32),
                          transform=transform)
    plane = write_raster(tmp_path / "plane.tif", (0.5 * (y - 3.4e6)).astype(np.float32),
                         transform=transform)
    centre = (height // 2, 32)
    with Scene(image, dem=trough) as scene:
        whole = scene.read(Window(0, 0, 64, height), (1, 2, 3), relief_m=16.0)["relief"][0]
        part = scene.read(Window(16, height // 4, 32, height // 2), (1, 2, 3),
                          relief_m=16.0)["relief"][0]
    assert whole[centre] == pytest.approx(-0.01 * 16 * 17 / 3, abs=1e-3)  # 16 px of 1 m
    np.testing.assert_allclose(part, whole[height // 4:height // 4 + height // 2, 16:48],
                               atol=1e-3)
    with Scene(image, dem=plane) as scene:
        rough = scene.read(Window(0, 0, 64, height), (1, 2, 3), roughness_m=4.0)["roughness"]
    steps = np.arange(-4 / dy, 4 / dy + 1) * 0.5 * dy  # rows within 4 m, each dy m apart
    assert rough[0][centre] == pytest.approx(np.std(steps), abs=1e-3)


def test_image_without_crs_is_refused(tmp_path) -> None:
    path = write_raster(tmp_path / "nocrs.tif", np.ones((3, 40, 40), np.uint8), crs=None)
    with pytest.raises(SlidemapError, match="no CRS"):
        Scene(path)


def test_a_png_without_crs_but_a_prj_beside_it_is_told_to_assign_that(tmp_path) -> None:
    """GDAL does not read the .prj beside a PNG with a world file: the advice names that
    .prj, not EPSG:32647 (a CRS the user may not have)."""
    path = tmp_path / "scene.png"
    with rasterio.open(path, "w", driver="PNG", width=40, height=40, count=3,
                       dtype="uint8") as ds:
        ds.write(np.ones((3, 40, 40), np.uint8))
    (tmp_path / "scene.pgw").write_text("0.5\n0\n0\n-0.5\n469200.25\n3446199.75\n")
    with pytest.raises(SlidemapError, match="EPSG:32647"):
        Scene(path)
    (tmp_path / "scene.prj").write_text(CRS.from_epsg(32647).to_wkt())
    advice = f"gdal_edit.py -a_srs {tmp_path / 'scene.prj'})"
    with pytest.raises(SlidemapError, match=re.escape(advice)):
        Scene(path)


def test_grid_windows_cover_the_scene_with_overlap() -> None:
    windows = grid_windows(100, 130, 64, 16)
    covered = np.zeros((100, 130), dtype=int)
    for w in windows:
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
        assert (w.height, w.width) == (64, 64)
    assert covered.min() >= 1
    assert grid_windows(20, 30, 64, 16) == [Window(0, 0, 30, 20)]


def test_random_windows_respect_min_valid_fraction() -> None:
    valid = np.zeros((200, 200), dtype=bool)
    valid[:, 150:] = True
    rng = np.random.default_rng(0)
    windows = random_windows(valid, 40, 50, 0.9, rng)
    assert len(windows) == 50
    for w in windows:
        block = valid[w.row_off:w.row_off + 40, w.col_off:w.col_off + 40]
        assert block.mean() >= 0.9
    assert random_windows(np.zeros((50, 50), bool), 20, 5, 0.5, rng) == []


def test_context_window_is_centred_then_kept_inside_the_scene() -> None:
    assert context_window(Window(100, 100, 40, 40), 80, 300, 300) == Window(80, 80, 80, 80)
    assert context_window(Window(100, 100, 40, 40), 20, 300, 300) == Window(110, 110, 20, 20)
    # Near an edge it shifts inside; wider than the scene it is clipped to it.
    assert context_window(Window(0, 250, 40, 40), 80, 300, 300) == Window(0, 220, 80, 80)
    assert context_window(Window(0, 0, 40, 40), 80, 60, 300) == Window(0, 0, 80, 60)


@pytest.mark.parametrize("factor", [1, 2])
def test_relief_of_a_window_is_that_of_the_whole_scene(tiny_scene, tmp_path, factor) -> None:
    """The halo read around a window gives each pixel the same square of elevations as a read
    of the whole scene, so training (whole scenes) and prediction (windows) see one channel."""
    with rasterio.open(tiny_scene["dem"]) as ds:
        dsm, profile = ds.read(1), ds.profile
    rows, cols = np.mgrid[0:96, 0:96]
    dsm = dsm + 20.0 * np.sin(rows / 7.0) * np.cos(cols / 11.0)  # hills on the tilted plane
    with rasterio.open(tmp_path / "hills.tif", "w", **profile) as dst:
        dst.write(dsm.astype(np.float32), 1)
    with Scene(tiny_scene["image"], dem=tmp_path / "hills.tif") as scene:
        whole = scene.read(Window(0, 0, 96, 96), (1, 2, 3), factor, relief_m=5.0)["relief"][0]
        for row, col in [(0, 0), (32, 40), (64, 64), (10, 64)]:
            part = scene.read(Window(col, row, 32, 32), (1, 2, 3), factor, slope=True,
                              relief_m=5.0)
            r, c, n = row // factor, col // factor, 32 // factor
            np.testing.assert_allclose(part["relief"][0], whole[r:r + n, c:c + n], atol=1e-3,
                                       equal_nan=True)
    assert np.isnan(whole[:, :8 // factor]).all() and np.nanstd(whole) > 1.0


def _with_band_metadata(path, **values) -> None:
    """Set a raster's band scales, offsets or units in place (as gdal_edit.py does)."""
    with rasterio.open(path, "r+") as ds:
        for name, value in values.items():
            setattr(ds, name, value)


def assert_same_terrain(scene_files: dict, dem: Path, dem_atol: float, slope_atol: float
                        ) -> None:
    """``dem`` under the scene reads as the scene's own DEM does: elevation and slope in metres
    and degrees, within the tolerances, over a window inside the scene."""
    window = Window(16, 16, 64, 64)
    with Scene(scene_files["image"], dem=scene_files["dem"]) as scene:
        truth = scene.read(window, (1, 2, 3), dem=True, slope=True)
    with Scene(scene_files["image"], dem=dem) as scene:
        sample = scene.read(window, (1, 2, 3), dem=True, slope=True)
    np.testing.assert_allclose(sample["dem"], truth["dem"], atol=dem_atol)
    np.testing.assert_allclose(sample["slope"], truth["slope"], atol=slope_atol)


@pytest.mark.parametrize(("stored", "dtype", "metadata"), [
    (10.0, np.int16, {"scales": (0.1,), "offsets": (0.0,)}),  # SRTM-style int16 decimetres
    (1 / 0.3048, np.float32, {"units": ("ft",)}),
    (1.0, np.float32, {"scales": (1.0,), "offsets": (-2900.0,), "units": ("metre",)}),
    (1.0, np.float32, {"units": ("m a.s.l.",)}),  # a unit named beyond its first word
])
def test_dem_values_are_read_in_metres(tiny_scene, tmp_path, stored, dtype, metadata) -> None:
    with rasterio.open(tiny_scene["dem"]) as src:
        metres = src.read(1)
    offset = metadata.get("offsets", (0.0,))[0]
    values = np.where(np.isnan(metres), -32768, np.round((metres - offset) * stored, 3))
    other = write_raster(tmp_path / "dem_units.tif", values.astype(dtype), nodata=-32768)
    _with_band_metadata(other, **metadata)
    assert_same_terrain(tiny_scene, other, dem_atol=0.06, slope_atol=0.5)


def test_dem_in_an_unknown_unit_is_refused(tiny_scene, tmp_path) -> None:
    with rasterio.open(tiny_scene["dem"]) as src:
        other = write_raster(tmp_path / "dem_fathoms.tif", src.read(1), nodata=float("nan"))
    _with_band_metadata(other, units=("fathom",))
    with pytest.raises(SlidemapError, match="in 'fathom', a unit slidemap does not know"):
        Scene(tiny_scene["image"], dem=other)


def test_dem_scale_of_zero_is_refused(tiny_scene, tmp_path) -> None:
    """A scale of 0 makes every elevation the offset: a flat DEM, not a DEM to read."""
    with rasterio.open(tiny_scene["dem"]) as src:
        other = write_raster(tmp_path / "dem_zero.tif", src.read(1), nodata=float("nan"))
    _with_band_metadata(other, scales=(0.0,))
    with pytest.raises(SlidemapError, match=r"has a scale of 0\.0 and an offset of 0\.0"):
        Scene(tiny_scene["image"], dem=other)


def test_a_paletted_image_is_told_to_expand_its_colours(tiny_scene, tmp_path) -> None:
    indices = write_raster(tmp_path / "paletted.tif", np.zeros((96, 96), np.uint8),
                           photometric="palette")
    with rasterio.open(indices, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (200, 150, 100, 255)})
    with Scene(indices) as scene, pytest.raises(SlidemapError, match=r"is paletted .*\("
                                                r"gdal_translate -expand rgb"):
        scene.check_bands((1, 2, 3), "the model")


def test_a_scene_coarser_than_the_working_resolution_is_told(tiny_scene, tmp_path) -> None:
    # 0.5 m pixels: 1 m and 0.7 m are reached by decimating (or nearly); 0.2 m is not, and the
    # scene was once read at 0.5 m beside scenes decimated to 0.2 m without a word.
    spec = InputSpec(image_bands=(1, 2, 3), resolution_m=0.2)
    with Scene(tiny_scene["image"]) as scene:
        assert scene.coarser_than(None) is None
        assert scene.coarser_than(1.0) is None and scene.coarser_than(0.7) is None
        assert "gdalwarp -tr 0.2 0.2" in (scene.coarser_than(0.2) or "")
    with pytest.warns(SlidemapWarning, match="coarser than the working resolution_m 0.2"):
        arrays = load_scene_arrays(tiny_scene["image"], tiny_scene["mask"], None, spec)
    assert arrays.x.shape == (3, 96, 96)


def _finer_vrt(source: Path, path: Path, times: int) -> Path:
    """A VRT of ``source`` on a grid ``times`` finer a side over the same ground (a kilobyte)."""
    with rasterio.open(source) as ds:
        crs, (height, width), t = ds.crs.to_wkt(), ds.shape, ds.transform
    path.write_text(
        f'<VRTDataset rasterXSize="{width * times}" rasterYSize="{height * times}">'
        f"<SRS>{crs}</SRS><GeoTransform>{t.c}, {t.a / times}, 0, {t.f}, 0, {t.e / times}"
        '</GeoTransform><VRTRasterBand dataType="Float32" band="1"><NoDataValue>nan'
        f'</NoDataValue><SimpleSource><SourceFilename relativeToVRT="0">{source}'
        f'</SourceFilename><SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" '
        f'xSize="{width}" ySize="{height}"/><DstRect xOff="0" yOff="0" '
        f'xSize="{width * times}" ySize="{height * times}"/></SimpleSource></VRTRasterBand>'
        "</VRTDataset>")
    return path


def test_a_dem_on_a_far_finer_grid_is_refused_before_a_window_is_warped(tiny_scene,
                                                                         tmp_path) -> None:
    """A 1 cm DEM under a 0.5 m image: warping one window read thousands of DEM pixels per
    image pixel, and GDAL failed to allocate 4 GB after 20 s with an error asking whether the
    file was corrupt. A DEM 4 times finer a side is still warped."""
    far = _finer_vrt(tiny_scene["dem"], tmp_path / "far.vrt", 50)
    with pytest.raises(SlidemapError, match=r"50 times finer .*gdalwarp -tr 0\.5 0\.5"):
        Scene(tiny_scene["image"], dem=far)
    near = _finer_vrt(tiny_scene["dem"], tmp_path / "near.vrt", 4)
    with Scene(tiny_scene["image"], dem=near) as scene:
        assert np.isfinite(scene.read(Window(40, 40, 16, 16), (1,), dem=True)["dem"]).all()


def test_a_decimated_read_is_the_same_whatever_overviews_the_file_has(tiny_scene,
                                                                      tmp_path) -> None:
    # gdaladdo's default overviews sample the nearest pixel; GDAL served them for a decimated
    # read, so a file with such overviews gave another image (and map) than the same pixels
    # without them.
    with_overviews = tmp_path / "with_overviews.tif"
    with_overviews.write_bytes(tiny_scene["image"].read_bytes())
    with rasterio.open(with_overviews, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
    reads = []
    for image in (tiny_scene["image"], with_overviews):
        with Scene(image) as scene:
            reads.append(scene.read(Window(0, 0, 96, 96), (1, 2, 3), factor=4)["image"])
    with rasterio.open(with_overviews) as ds:
        served = ds.read(out_shape=(3, 24, 24), resampling=Resampling.average)
    assert not np.array_equal(served, reads[0])  # the file's overviews differ from the pixels
    np.testing.assert_array_equal(reads[1], reads[0])


def test_an_infinite_elevation_is_nodata_not_a_cliff_beside_it(tiny_scene, tmp_path) -> None:
    """A float DEM's +inf (no nodata declared) was left out of the valid pixels, but its
    neighbours, still valid, read slope 90° and curvature ±inf: the model's input at valid
    pixels was infinite. It is now nodata, as NaN is."""
    with rasterio.open(tiny_scene["dem"]) as src:
        z = src.read(1)
    z[40, 40] = np.inf
    z[60, 60] = -np.inf
    other = write_raster(tmp_path / "dem_inf.tif", z)
    z[40, 40] = z[60, 60] = np.nan
    holes = write_raster(tmp_path / "dem_nan.tif", z)
    terrain = {"slope": True, "curvature": True, "relief_m": (8.0,), "roughness_m": 4.0}
    window = Window(16, 16, 64, 64)
    with Scene(tiny_scene["image"], dem=other) as scene:
        sample = scene.read(window, (1, 2, 3), dem=True, **terrain)
        elevation, slope = scene.terrain(window)
    with Scene(tiny_scene["image"], dem=holes) as scene:
        truth = scene.read(window, (1, 2, 3), dem=True, **terrain)
    for key in ("dem", "slope", "curvature", "relief", "roughness", "valid"):
        np.testing.assert_array_equal(sample[key], truth[key], err_msg=key)
    assert not np.isinf(elevation).any() and not np.isinf(slope).any()


def test_an_integer_dem_on_the_image_grid_is_not_rounded_when_decimated(tiny_scene,
                                                                         tmp_path) -> None:
    """GDAL's decimated read of an int16 band rounds each average to a whole metre: an int16
    DEM on the image grid read at 2 m came in 1 m steps, a curvature noisier than the terrain.
    It now reads as the same whole metres stored as float32 do."""
    with rasterio.open(tiny_scene["dem"]) as src:
        z = src.read(1)
    whole = np.where(np.isnan(z), -32768, np.round(z * 1.3))
    integer = write_raster(tmp_path / "dem_int16.tif", whole.astype(np.int16), nodata=-32768)
    floating = write_raster(tmp_path / "dem_float.tif", whole.astype(np.float32), nodata=-32768)
    window = Window(16, 16, 64, 64)
    samples = []
    for dem in (integer, floating):
        with Scene(tiny_scene["image"], dem=dem) as scene:
            samples.append(scene.read(window, (1, 2, 3), factor=4, dem=True, curvature=True))
    np.testing.assert_allclose(samples[0]["dem"], samples[1]["dem"], atol=0.02)
    np.testing.assert_allclose(samples[0]["curvature"], samples[1]["curvature"], atol=0.5)


def test_a_dem_clipped_to_the_image_data_is_not_called_partial(tiny_scene, tmp_path) -> None:
    """A DEM clipped to the image's valid pixels (its collar left out) warned that the rest was
    mapped as no data and to pass a DEM of the whole scene: nothing was lost. It warns only
    where valid pixels lack an elevation."""
    with rasterio.open(tiny_scene["image"]) as src:
        image, transform = src.read(), src.transform
    image[:, :, :40] = 0  # a wide collar: the image has data from column 40 on
    collared = write_raster(tmp_path / "collared.tif", image, nodata=0)
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = src.read(1)
    clipped = write_raster(tmp_path / "clipped.tif", dsm[:, 36:].copy(),
                           transform=transform @ Affine.translation(36, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        Scene(collared, dem=clipped).close()
    with pytest.warns(SlidemapWarning, match="covers only 62% of image"):
        Scene(tiny_scene["image"], dem=clipped).close()


def test_a_window_tested_then_read_is_masked_once(tiny_scene, tmp_path, monkeypatch) -> None:
    """Prediction tests each window for data, then reads it: the mask of a floating-point
    image reads every band, and it was computed, so the image read, twice per window. The
    second window, and a window read alone, are masked anew, as before."""
    with rasterio.open(tiny_scene["image"]) as src:
        pixels = src.read().astype(np.float32)
    pixels[:, :, :8] = np.nan
    image = write_raster(tmp_path / "float.tif", pixels, nodata=float("nan"))
    first, second = Window(0, 0, 48, 48), Window(48, 48, 48, 48)
    with Scene(image) as alone:
        expected = [alone.read(window, (1, 2, 3), 2)["valid"] for window in (first, second)]
    with Scene(image) as scene:
        calls: list[Window | None] = []
        real = scene._dataset_mask

        def spy(window: Window | None = None, out_shape: tuple[int, int] | None = None
                ) -> np.ndarray:
            calls.append(window)
            return real(window=window, out_shape=out_shape)

        monkeypatch.setattr(scene, "_dataset_mask", spy)
        valid = []
        for window in (first, second):
            assert scene.any_valid(window, 2)
            valid.append(scene.read(window, (1, 2, 3), 2)["valid"])
        assert calls == [first, second]
    assert all(np.array_equal(a, b) for a, b in zip(valid, expected, strict=True))


def test_a_dem_in_feet_by_its_vertical_crs_alone_is_read_in_metres(tiny_scene, tmp_path
                                                                    ) -> None:
    """A VRT over a DEM in NAVD88 feet (EPSG:32647+6360) declares no band unit, only its
    vertical CRS's: its feet were read as metres, slopes 3.3 times too steep."""
    with rasterio.open(tiny_scene["dem"]) as src:
        write_raster(tmp_path / "feet.tif", src.read(1) / 0.3048006, nodata=np.nan)
        width, height, gt = src.width, src.height, src.transform.to_gdal()
    srs = escape(CRS.from_string("EPSG:32647+6360").to_wkt())
    vrt = tmp_path / "feet.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{srs}</SRS>'
        f'<GeoTransform>{", ".join(map(repr, gt))}</GeoTransform>'
        '<VRTRasterBand dataType="Float32" band="1"><NoDataValue>nan</NoDataValue>'
        '<SimpleSource><SourceFilename relativeToVRT="1">feet.tif</SourceFilename>'
        '<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    assert_same_terrain(tiny_scene, vrt, dem_atol=0.01, slope_atol=0.1)
