"""The elevation check before prediction: a scene outside a model's training elevations warns."""

import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import tiny_bundle, write_raster
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.data.normalization import BandStats
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapWarning
from slidemap.infer.domain import band_order_mismatch, scene_warnings, unmasked_voids
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import save_model

OPTIONS = PredictOptions(tile=48, overlap=16)


@pytest.fixture
def dem_model(tmp_path):
    """An untrained width-4 U-Net on RGB + DEM + slope, trained (so its statistics say) on
    elevations of 3000 ± 20 m, as the tiny scene's are."""
    bundle = tiny_bundle(InputSpec(image_bands=(1, 2, 3), dem=True, slope=True),
                         mean=[60.0, 60.0, 60.0, 3000.0, 10.0], std=[30.0, 30.0, 30.0, 20.0, 5.0])
    return save_model(bundle, tmp_path / "models" / "dem")


def shifted_dem(scene: dict, metres: float, tmp_path: Path) -> Path:
    """The tiny scene's DSM raised by ``metres``: the same terrain in another valley."""
    with rasterio.open(scene["dem"]) as src:
        dsm = src.read(1)
    return write_raster(tmp_path / f"dsm_{metres:+.0f}.tif", dsm + np.float32(metres),
                        nodata=float("nan"))


def test_a_scene_at_the_training_elevations_does_not_warn(tiny_scene, dem_model, tmp_path
                                                          ) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], dem_model, OPTIONS)


def test_a_scene_far_from_the_training_elevations_warns(tiny_scene, dem_model, tmp_path) -> None:
    dem = shifted_dem(tiny_scene, -1500, tmp_path)
    with pytest.warns(SlidemapWarning, match=r"lies at 15\d\d m .* outside the 2940-3060 m"):
        result = api.predict(tiny_scene["image"], tmp_path / "out", dem, dem_model, OPTIONS)
    assert (tmp_path / "out").is_dir() and result.valid_pixels > 0  # predicted all the same


@pytest.mark.parametrize("case", ["no dem channel", "scene statistics"])
def test_no_warning_where_absolute_elevation_is_not_read(case, tiny_scene, tiny_model,
                                                         dem_model, tmp_path) -> None:
    model, options = (tiny_model, OPTIONS) if case == "no dem channel" else \
        (dem_model, PredictOptions(tile=48, overlap=16, normalise="scene"))
    dem = shifted_dem(tiny_scene, -1500, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(tiny_scene["image"], tmp_path / "out", dem, model, options)


def test_the_command_line_prints_the_warning_on_one_line(run_cli, tiny_scene, dem_model,
                                                         tmp_path) -> None:
    dem = shifted_dem(tiny_scene, 800, tmp_path)
    code, err = run_cli("predict", tiny_scene["image"], "--dem", dem, "--model", dem_model,
                        "--out", tmp_path / "out", "--tile", 48, "--overlap", 16)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1 and re.match(r"warning: the DEM .* lies at 38\d\d m", lines[0])
    assert "Traceback" not in err and (tmp_path / "out" / "scene_mask.tif").exists()


def test_reflectance_under_an_8_bit_model_warns(tiny_scene, tmp_path) -> None:
    """0-1 reflectance lies inside an 8-bit model's mean ± 3 deviations (60 ± 90): its narrow
    spread is what gives it away."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "models" / "rgb")
    with rasterio.open(tiny_scene["image"]) as src:
        reflectance = src.read().astype(np.float32) / 255
    image = write_raster(tmp_path / "reflectance.tif", reflectance, nodata=0.0)
    with pytest.warns(SlidemapWarning, match=r"band 1 varies by 0\.\d+ .* another scale"):
        api.predict(image, tmp_path / "out", None, model, OPTIONS)
    with warnings.catch_warnings():  # the same scene in 8-bit counts does not
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(tiny_scene["image"], tmp_path / "out8", None, model, OPTIONS)


def test_a_scene_of_little_data_is_sampled_on_its_data(tmp_path) -> None:
    """Data on under 1 % of a 2048 px scene, one of the 16 windows spread over its extent
    catching a 6 × 6 px flat corner of it: that corner alone read as imagery on another scale."""
    pixels = np.zeros((3, 2048, 2048), dtype=np.uint8)
    pixels[:, 719:919, 719:919] = np.random.default_rng(0).integers(40, 90, size=(3, 200, 200))
    pixels[:, 719:725, 719:725] = 60  # inside the even grid's window at row and column 661
    image = write_raster(tmp_path / "sparse.tif", pixels, nodata=0, tiled=True)
    spec = InputSpec(image_bands=(1, 2, 3))
    with Scene(image) as scene:
        assert scene_warnings(scene, spec, [BandStats([60.0] * 3, [30.0] * 3)]) == []


@pytest.mark.parametrize("normalise", ["model", "scene"])
def test_a_black_collar_without_nodata_warns(tiny_scene, tmp_path, normalise) -> None:
    """A third of the scene black, and no nodata value to say it is no data: it would be
    mapped as ground (and skew the scene's statistics) without a word."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "models" / "rgb")
    with rasterio.open(tiny_scene["image"]) as src:
        pixels = src.read()
    pixels[:, :, :32] = 0
    options = replace(OPTIONS, normalise=normalise)
    collar = write_raster(tmp_path / "collar.tif", pixels, nodata=None)
    with pytest.warns(SlidemapWarning, match=r"\d+% of its sampled pixels black .* -a_nodata 0"):
        api.predict(collar, tmp_path / "out", None, model, options)
    marked = write_raster(tmp_path / "marked.tif", pixels, nodata=0)
    with warnings.catch_warnings():  # the same collar marked as nodata does not
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(marked, tmp_path / "marked_out", None, model, options)


@pytest.mark.parametrize("normalise", ["model", "scene"])
def test_an_image_declared_bgr_warns(tiny_scene, tmp_path, normalise) -> None:
    """Bands 1-3 declared blue, green, red are read by an RGB model as red, green, blue: the
    colours swap under every normalisation, and the map would not show it."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "models" / "rgb")
    with rasterio.open(tiny_scene["image"]) as src:
        pixels = src.read()
    options = replace(OPTIONS, normalise=normalise)
    bgr = write_raster(tmp_path / "bgr.tif", pixels[::-1].copy(), nodata=0)
    with rasterio.open(bgr, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    with pytest.warns(SlidemapWarning, match=r"declares its bands 1-3 as blue, green, red.* "
                                             r"gdal_translate -b 3 -b 2 -b 1 "):
        api.predict(bgr, tmp_path / "out", None, model, options)
    rgb = write_raster(tmp_path / "rgb.tif", pixels, nodata=0)
    with rasterio.open(rgb, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    with warnings.catch_warnings():  # declared in the model's order, it does not
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(rgb, tmp_path / "rgb_out", None, model, options)


def test_dem_voids_without_nodata_warn(tiny_scene, tiny_model, tmp_path) -> None:
    """SRTM-style -32768 voids that no nodata value marks are read as elevations: cliffs of
    35 km around each void, in the slope of every model that reads the DEM."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = np.nan_to_num(src.read(1), nan=-32768).astype(np.int16)
    dsm[40:60, 40:60] = -32768
    unmarked = write_raster(tmp_path / "voids.tif", dsm, nodata=None)
    with pytest.warns(SlidemapWarning, match=r"DEM .* at -32768 m, an elevation no ground has.*"
                                             r"-a_nodata -32768"):
        api.predict(tiny_scene["image"], tmp_path / "out", unmarked, tiny_model, OPTIONS)
    marked = write_raster(tmp_path / "marked.tif", dsm, nodata=-32768)
    with warnings.catch_warnings():  # the same voids marked as nodata do not
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(tiny_scene["image"], tmp_path / "marked_out", marked, tiny_model, OPTIONS)


def test_a_dem_with_data_under_part_of_the_image_warns(tiny_scene, tiny_model, tmp_path
                                                       ) -> None:
    """A DEM whose extent covers the scene but whose data (a nodata collar, a missing tile)
    lies under a fifth of it maps the rest as no data: the extent check does not see it, so
    the data check says so; the tiny DEM's own gap, under the image's nodata, does not count."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm = src.read(1)
    dsm[:, :76] = np.nan
    sliver = write_raster(tmp_path / "sliver.tif", dsm, nodata=float("nan"))
    with pytest.warns(SlidemapWarning, match=r"DEM .*sliver.tif has data under only \d+% of "
                                             r"image .* fill its gaps \(gdal_fillnodata.py\)"):
        api.predict(tiny_scene["image"], tmp_path / "out", sliver, tiny_model, OPTIONS)


def test_oblong_pixels_warn(tiny_scene, tmp_path) -> None:
    """0.5 m × 1 m pixels are read as squares: the model sees the ground squashed by half along
    y, and the map would not show it."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "models" / "rgb")
    with rasterio.open(tiny_scene["image"]) as src:
        pixels, grid = src.read(), src.transform
    oblong = write_raster(tmp_path / "oblong.tif", pixels, nodata=0,
                          transform=from_origin(grid.c, grid.f, 0.5, 1.0))
    with pytest.warns(SlidemapWarning, match=r"0\.5 m × 1 m on the ground.* squashed by 50% .*"
                                             r"gdalwarp -tr 0\.5 0\.5"):
        api.predict(oblong, tmp_path / "out", None, model, OPTIONS)
    square = write_raster(tmp_path / "square.tif", pixels, nodata=0,
                          transform=from_origin(grid.c, grid.f, 0.5, 0.52))
    with warnings.catch_warnings():  # 4 % longer one way does not
        warnings.simplefilter("error", SlidemapWarning)
        api.predict(square, tmp_path / "square_out", None, model, OPTIONS)


def _counting(scene: Scene, method: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A spy on ``scene``'s ``method``: the list grows by one per call."""
    calls: list[int] = []
    real = getattr(scene, method)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scene, method, spy)
    return calls


def test_a_scene_is_sampled_once_for_all_its_warnings(tiny_scene, monkeypatch) -> None:
    """The elevation and voids checks look at the same DEM sample, the collar and scale checks
    at the same image sample: each is read once per Scene (hundreds of small reads, over the
    network for a remote DEM), not once per check."""
    spec = InputSpec(image_bands=(1, 2, 3), dem=True)
    stats = [BandStats([60.0, 60.0, 60.0, 3000.0], [30.0, 30.0, 30.0, 20.0])]
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as once:
        dem, image = (_counting(once, name, monkeypatch) for name in ("_read_dem",
                                                                      "_dataset_mask"))
        once.dem_sample()
        once.valid_sample()
        once.image_sample(spec.image_bands)
        one_sample = (len(dem), len(image))
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as scene:
        dem, image = (_counting(scene, name, monkeypatch) for name in ("_read_dem",
                                                                       "_dataset_mask"))
        scene_warnings(scene, spec, stats)
        scene_warnings(scene, spec, stats)
        assert one_sample[0] > 0 and (len(dem), len(image)) == one_sample
        assert not scene.dem_sample().flags.writeable  # shared: no check may change it


def _declared(tiny_scene: dict, path: Path, colours: list[ColorInterp]) -> Path:
    """The tiny scene's image with as many bands as ``colours``, declared as them."""
    with rasterio.open(tiny_scene["image"]) as src:
        pixels = src.read()
    image = write_raster(path, np.concatenate([pixels] * 2)[:len(colours)].copy(), nodata=0)
    with rasterio.open(image, "r+") as ds:
        ds.colorinterp = colours
    return image


def test_band_order_is_suggested_only_where_every_colour_is_declared(tiny_scene,
                                                                    tmp_path) -> None:
    """Bands declared blue, green, undefined hold no declared red: no -b order is right (the
    old '-b 2 -b 1 -b 3' put green first), so the warning lists the declarations and asks for
    red, green, blue in bands 1-3; with red declared in band 4 the order is known."""
    spec = InputSpec(image_bands=(1, 2, 3))
    blue_green = _declared(tiny_scene, tmp_path / "bg.tif",
                           [ColorInterp.blue, ColorInterp.green, ColorInterp.undefined])
    with Scene(blue_green) as scene:
        message = band_order_mismatch(scene, spec)
    assert message is not None and "-b 2 -b 1" not in message
    assert "band 1 blue, band 2 green, band 3 undefined and no red band" in message
    assert "so that bands 1-3 are red, green, blue" in message
    red_last = _declared(tiny_scene, tmp_path / "bgur.tif", [
        ColorInterp.blue, ColorInterp.green, ColorInterp.undefined, ColorInterp.red])
    with Scene(red_last) as scene:
        message = band_order_mismatch(scene, spec)
    assert message is not None and f"gdal_translate -b 4 -b 2 -b 1 -b 3 {red_last}" in message


def test_a_dem_in_centimetres_without_a_unit_is_not_called_voids(tiny_scene, tmp_path) -> None:
    """Elevations in centimetres, no unit declared, lie beyond any ground at many values: the
    warning named their highest as a void value to set as nodata, which would leave the rest
    read 100 times too steep."""
    with rasterio.open(tiny_scene["dem"]) as src:
        centimetres = write_raster(tmp_path / "cm.tif", src.read(1) * 100, nodata=np.nan)
    with Scene(tiny_scene["image"], dem=centimetres) as scene:
        message = unmasked_voids(scene)
    assert message is not None and "another unit" in message and "-a_nodata" not in message


def test_a_dem_with_three_fill_values_is_called_voids(tiny_scene, tmp_path) -> None:
    """A mosaic whose tiles fill their voids with -9999, -32768 and 9999 holds no fill value
    that is half of what lies beyond Earth's elevations: it was called another unit."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dem = src.read(1)
    dem[10:30, 20:40], dem[40:60, 20:40], dem[70:90, 20:40] = -9999, -32768, 9999
    filled = write_raster(tmp_path / "filled.tif", dem, nodata=np.nan)
    with Scene(tiny_scene["image"], dem=filled) as scene:
        message = unmasked_voids(scene)
    assert message is not None and "another unit" not in message
    assert re.search(r"at (-?\d+, ){2}-?\d+ m, elevations .* -a_nodata", message)


def test_a_dem_in_feet_a_few_pixels_beyond_is_not_called_voids(tiny_scene, tmp_path) -> None:
    """A DEM in feet whose summit rises a little above 9000 ft has a few sampled pixels beyond
    Earth's elevations, each at its own value: each was a twentieth of so few, and all were
    named as void values to set as nodata, where they are elevations in another unit."""
    with rasterio.open(tiny_scene["dem"]) as src:
        feet = src.read(1) - 3000.0 + 8967.0  # 8967 ft to 9000.25 ft corner to corner
    peak = write_raster(tmp_path / "feet.tif", feet.astype(np.float32), nodata=np.nan)
    with Scene(tiny_scene["image"], dem=peak) as scene:
        beyond = int((scene.dem_sample() > 9000).sum())
        message = unmasked_voids(scene)
    assert 1 < beyond < 20
    assert message is not None and "another unit" in message and "-a_nodata" not in message
