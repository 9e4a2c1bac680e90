"""``slidemap explain``: pictures of one window, GeoTIFFs on that window's grid, one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import RGB_SLOPE, mirrored_scene, rewrite_sidecar, tiny_bundle, write_raster
from PIL import Image
from rasterio.transform import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from slidemap.data.channels import InputSpec
from slidemap.explain.overlay import rgb_preview
from slidemap.io.modelfile import ModelBundle, save_model
from slidemap.models import ProbabilityAverage


def save_bundle(path: Path, architecture: str = "unet", spec: InputSpec = RGB_SLOPE,
                threshold: float = 0.5) -> Path:
    bundle = tiny_bundle(spec, architecture, mean=[60.0, 60.0, 60.0, 10.0],
                         std=[30.0, 30.0, 30.0, 5.0], threshold=threshold)
    return save_model(bundle, path)


def test_explain_writes_overlays_and_geotiffs_on_the_window_grid(
        tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    out = tmp_path / "explain"
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--window", "8,16,64,48", "--box", "14,30,34,60",
                        "--out", out)
    assert code == 0, err
    for name in ("gradcam", "probability"):
        with Image.open(out / f"{name}.png") as png:
            assert png.size[0] > 100 and png.size[1] > 100
        with rasterio.open(tiny_scene["image"]) as src, rasterio.open(out / f"{name}.tif") as ds:
            assert ds.crs == src.crs
            assert ds.transform == window_transform(Window(8, 16, 64, 48), src.transform)
            assert ds.shape == (48, 64)
            heat = ds.read(1)
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    summary = json.loads((out / "explain.json").read_text())
    assert summary["window"] == [8, 16, 64, 48] and summary["region_pixels"] == 20 * 30
    assert summary["layer"]


def test_attention_maps_and_decimation_back_to_native_pixels(tiny_scene, tmp_path, run_cli) -> None:
    """A 1 m model on the 0.5 m scene works on 48 px but writes 96 px GeoTIFFs."""
    spec = InputSpec(image_bands=(1, 2, 3), slope=True, resolution_m=1.0)
    model = save_bundle(tmp_path / "att", "unetpp_spatial", spec)
    out = tmp_path / "explain"
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        model, "--box", "30,40,70,80", "--out", out)
    assert code == 0, err
    attention = sorted(p.name for p in out.glob("attention_*.tif"))
    assert attention and all((out / a.replace(".tif", ".png")).exists() for a in attention)
    with rasterio.open(tiny_scene["image"]) as src, rasterio.open(out / attention[0]) as ds:
        assert ds.transform == src.transform and ds.shape == src.shape == (96, 96)
    assert json.loads((out / "explain.json").read_text())["decimation"] == 2


@pytest.mark.parametrize(("threshold", "outcome"), [(0.0, "explained"), (1.0, "pass --box")])
def test_default_region_is_the_predicted_landslide_pixels(tiny_scene, tmp_path, run_cli,
                                                          threshold, outcome) -> None:
    """Every valid pixel is landslide at threshold 0 (nodata columns excluded), none at 1."""
    model = save_bundle(tmp_path / "m", threshold=threshold)
    out = tmp_path / "explain"
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        model, "--out", out)
    if outcome == "explained":
        assert code == 0, err
        summary = json.loads((out / "explain.json").read_text())
        assert summary["window"] == [0, 0, 96, 96] and summary["region_pixels"] == 96 * 88
    else:
        assert code == 1 and outcome in err and not out.exists()


def test_a_box_explains_only_its_valid_pixels(tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    """The logits of nodata pixels are no map's: a box over the 8 nodata columns summed them
    into the score, and a box on nodata alone gave an all-zero Grad-CAM without a word."""
    out = tmp_path / "explain"
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--box", "0,0,20,20", "--out", out)
    assert code == 0, err
    assert json.loads((out / "explain.json").read_text())["region_pixels"] == 20 * 12


def test_image_without_georeference_gets_pictures_only(tmp_path, tiny_model, run_cli) -> None:
    rng = np.random.default_rng(1)
    image = write_raster(tmp_path / "plain.tif", rng.integers(1, 200, (3, 64, 64), np.uint8),
                         crs=None)
    dem = write_raster(tmp_path / "plain_dem.tif",
                       np.add.outer(np.arange(64.0), np.arange(64.0)).astype(np.float32),
                       crs=None)
    out = tmp_path / "explain"
    code, err = run_cli("explain", image, "--dem", dem, "--model", tiny_model, "--box",
                        "0,0,32,32", "--out", out)
    assert code == 0, err
    assert (out / "gradcam.png").exists() and not list(out.glob("*.tif"))


@pytest.mark.parametrize(("args", "message", "exit_code"), [
    (("--window", "1,2,3"), "--window '1,2,3' is not valid", 2),  # malformed: a usage error
    (("--window", "50,0,64,64"), "is not inside the 96×96 px image", 1),
    (("--window", "0,0,16,16"), "too small", 1),
    (("--box", "0,0,200,10"), "--box 0,0,200,10 is empty or outside", 1),
    (("--box", "10,0,30,8"), "--box 10,0,30,8 holds no valid pixel", 1),
    (("--box", "a,b,c,d"), "--box 'a,b,c,d' is not valid", 2),
    (("--layer", "nope", "--box", "0,0,9,9"),  # the names to choose from, not a Python call
     "model has no layer 'nope': choose one that outputs a feature map: encoder.stages.0, ",
     1),
])
def test_bad_input_is_one_line(tiny_scene, tiny_model, tmp_path, run_cli, args,
                               message, exit_code) -> None:
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--out", tmp_path / "x", *args)
    assert code == exit_code
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_an_ensemble_file_is_explained_over_its_members(tiny_scene, tmp_path, run_cli) -> None:
    """The map of two averaged networks was the last one's alone, and ``--layer decoder`` (the
    name its members use) was refused."""
    nets = [tiny_bundle(RGB_SLOPE, seed=seed).model for seed in (1, 2)]
    both = save_model(ModelBundle(model=ProbabilityAverage(nets), architecture="unet", width=4,
                                  options={"depth": 2}, inputs=RGB_SLOPE, mean=[60.0] * 4,
                                  std=[30.0] * 4, members=2), tmp_path / "both")
    args = ("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model", both,
            "--box", "30,40,70,80")
    for out, layer in (("default", ()), ("named", ("--layer", "decoder"))):
        code, err = run_cli(*args, *layer, "--out", tmp_path / out)
        assert code == 0, err
        summary = json.loads((tmp_path / out / "explain.json").read_text())
        assert summary["layer"] == "mean over 2 members' decoder"
    code, err = run_cli(*args, "--layer", "members.1.decoder", "--out", tmp_path / "member")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "name a layer as each member names it (e.g. 'decoder')" in err
    assert not (tmp_path / "member").exists()


def test_existing_outputs_need_overwrite(tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    args = ("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model", tiny_model,
            "--box", "30,40,70,80", "--out", tmp_path / "x")
    assert run_cli(*args)[0] == 0
    code, err = run_cli(*args)
    assert code == 1 and "pass --overwrite" in err
    assert run_cli(*args, "--overwrite")[0] == 0


def test_overwrite_with_another_model_leaves_none_of_its_maps(tiny_scene, tiny_model, tmp_path,
                                                              run_cli) -> None:
    """An attention model's maps, then a plain U-Net's into the same folder: the attention
    pictures of the first would sit beside the second's as if they were its own."""
    out = tmp_path / "x"
    attention = save_bundle(tmp_path / "att", "unetpp_spatial")
    for model in (attention, tiny_model):
        code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"],
                            "--model", model, "--box", "30,40,70,80", "--out", out,
                            "--overwrite")
        assert code == 0, err
        if model == attention:
            assert list(out.glob("attention_*"))
    assert not list(out.glob("attention_*"))
    assert {p.name for p in out.iterdir()} == {"gradcam.png", "gradcam.tif", "probability.png",
                                               "probability.tif", "explain.json"}


def test_geotiffs_are_nodata_where_the_image_is_and_scales_are_recorded(
        tiny_scene, tmp_path, run_cli) -> None:
    """The scene's left 8 columns are nodata; a model predicting at scales 1 and 0.5 is
    explained in one pass at scale 1, and explain.json says so."""
    bundle = tiny_bundle(RGB_SLOPE, mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0])
    bundle.predict = replace(bundle.predict, scales=(1.0, 0.5))
    model = save_model(bundle, tmp_path / "two_scales")
    out = tmp_path / "x"
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        model, "--box", "30,40,70,80", "--out", out)
    assert code == 0, err
    with rasterio.open(out / "probability.tif") as ds:
        prob = ds.read(1)
        assert np.isnan(ds.nodata)
    assert np.isnan(prob[:, :8]).all() and np.isfinite(prob[:, 8:]).all()
    summary = json.loads((out / "explain.json").read_text())
    assert summary["scale"] == 1.0 and summary["predict_scales"] == [1.0, 0.5]


def test_a_scene_too_small_for_the_model_is_refused_as_predict_refuses_it(
        tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    """A 1 px wide strip has no window the model can read: without --window, explain took the
    strip itself and drew maps of it."""
    with rasterio.open(tiny_scene["image"]) as src:
        strip = write_raster(tmp_path / "strip.tif", src.read(window=Window(50, 0, 1, 96)),
                             nodata=0, transform=src.window_transform(Window(50, 0, 1, 96)))
    for command in ("explain", "predict"):
        code, err = run_cli(command, strip, "--dem", tiny_scene["dem"], "--model", tiny_model,
                            "--out", tmp_path / command)
        assert code == 1 and "1 × 96 px, too small for this model" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "explain").exists()


def test_a_model_of_small_windows_explains_a_scene_of_normal_size(
        tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    """A model predicting in 16 px windows (the sidecar allows it): explain took that window as
    the scene's size and refused a 96 px scene as too small; it explains the smallest window a
    model reads (32 px) at the scene's centre."""
    sidecar = json.loads(tiny_model.with_suffix(".json").read_text())
    rewrite_sidecar(tiny_model, predict={**sidecar["predict"], "tile": 16, "overlap": 4})
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--out", tmp_path / "x")
    assert code == 0, err
    with rasterio.open(tmp_path / "x" / "gradcam.tif") as ds:
        assert (ds.height, ds.width) == (32, 32)


def test_explain_warns_of_imagery_on_another_scale_as_predict_does(
        tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    """16-bit counts under an 8-bit model: predict says its map will be poor; explain drew the
    same network's probability and Grad-CAM of them without a word."""
    with rasterio.open(tiny_scene["image"]) as src:
        counts = write_raster(tmp_path / "counts.tif", src.read().astype(np.uint16) * 40,
                              nodata=0)
    args = ("--dem", tiny_scene["dem"], "--model", tiny_model, "--box", "30,40,70,80")
    code, err = run_cli("explain", counts, *args, "--out", tmp_path / "x")
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warning) == 1 and "outside the" in warning[0], err
    code, err = run_cli("explain", tiny_scene["image"], *args, "--out", tmp_path / "y")
    assert code == 0 and "warning" not in err, err


def south_up_copy(scene: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The tiny scene's image and DEM stored south up: rows reversed, y growing down."""
    south = {}
    for key in ("image", "dem"):
        with rasterio.open(scene[key]) as src:
            data, t = src.read(), src.transform
            south[key] = write_raster(folder / f"south_{key}.tif", data[:, ::-1].copy(),
                                      transform=Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * 96),
                                      nodata=src.nodata)
    return south


def test_pictures_face_north_on_a_south_up_grid(tiny_scene, tiny_model, tmp_path, run_cli,
                                                monkeypatch) -> None:
    """The PNGs of a south-up scene show its north at the top, as those of the same ground
    stored north up do (they were drawn as the rows lie: upside down)."""
    drawn: dict[str, np.ndarray] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[f"{Path(path).parent.name}/{Path(path).stem}"] = rgb

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    south = south_up_copy(tiny_scene, tmp_path)
    for name, scene in (("north", tiny_scene), ("south", south)):
        code, err = run_cli("explain", scene["image"], "--dem", scene["dem"], "--model",
                            tiny_model, "--box", "0,0,20,20", "--out", tmp_path / name)
        assert code == 0, err
    assert np.array_equal(drawn["south/gradcam"], drawn["north/gradcam"])
    assert not np.array_equal(drawn["north/gradcam"], drawn["north/gradcam"][::-1])


def test_the_network_explained_sees_a_south_up_grid_north_up(tiny_scene, tiny_model,
                                                             tmp_path, run_cli, monkeypatch
                                                             ) -> None:
    """Grad-CAM and the probability of a south-up scene are those of the same ground stored
    north up, in the PNGs and (flipped back onto the stored rows) the GeoTIFFs: the network
    sees the window north up, as predict feeds it (it saw it upside down)."""
    drawn: dict[str, np.ndarray] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[f"{Path(path).parent.name}/{Path(path).stem}"] = heat

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    south = mirrored_scene(tiny_scene, tmp_path / "south", (True, False))
    for name, scene, box in (("north", tiny_scene, "0,40,20,80"),
                             ("south", south, "76,40,96,80")):
        code, err = run_cli("explain", scene["image"], "--dem", scene["dem"], "--model",
                            tiny_model, "--window", "0,0,96,96", "--box", box,
                            "--out", tmp_path / f"x_{name}")
        assert code == 0, err
    for picture in ("gradcam", "probability"):
        north, south_up = drawn[f"x_north/{picture}"], drawn[f"x_south/{picture}"]
        np.testing.assert_allclose(south_up, north, atol=1e-5)
        with rasterio.open(tmp_path / "x_north" / f"{picture}.tif") as n, \
                rasterio.open(tmp_path / "x_south" / f"{picture}.tif") as s:
            np.testing.assert_allclose(s.read(1)[::-1], n.read(1), atol=1e-5)


def test_an_image_without_georeference_is_drawn_as_stored(tmp_path, tiny_model, run_cli,
                                                         monkeypatch) -> None:
    """GDAL's identity geotransform (no georeference: a plain PNG) runs y down like a south-up
    grid, but says nothing of north: the picture shows row 0 at the top, as the image does (it
    was drawn upside down)."""
    drawn: dict[str, np.ndarray] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[Path(path).stem] = rgb

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    pixels = np.random.default_rng(1).integers(1, 200, (3, 64, 64), np.uint8)
    image = write_raster(tmp_path / "plain.tif", pixels, crs=None, transform=Affine.identity())
    dem = write_raster(tmp_path / "plain_dem.tif", np.ones((64, 64), np.float32), crs=None,
                       transform=Affine.identity())
    code, err = run_cli("explain", image, "--dem", dem, "--model", tiny_model, "--box",
                        "0,0,32,32", "--out", tmp_path / "x")
    assert code == 0, err
    np.testing.assert_array_equal(drawn["gradcam"], rgb_preview(pixels))


def test_a_box_counts_stored_rows_and_is_outlined_where_the_picture_shows_it(
        tiny_scene, tiny_model, tmp_path, run_cli, monkeypatch) -> None:
    """--box counts the window's stored rows, as --window and the GeoTIFFs do: on a south-up
    copy of the scene, rows 76-96 are the ground of rows 0-20 of the north-up one, and the
    north-up PNGs outline that box at the top where it lies (nothing showed where a box read
    off a picture of a south-up grid had landed: at the mirrored rows)."""
    drawn: dict[str, tuple] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[f"{Path(path).parent.name}/{Path(path).stem}"] = (rgb, box)

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    south = south_up_copy(tiny_scene, tmp_path)
    for name, scene, box in (("north", tiny_scene, "0,40,20,80"),
                             ("south", south, "76,40,96,80")):
        code, err = run_cli("explain", scene["image"], "--dem", scene["dem"], "--model",
                            tiny_model, "--window", "0,0,96,96", "--box", box,
                            "--out", tmp_path / name)
        assert code == 0, err
    for picture in ("gradcam", "probability"):
        north, south_up = drawn[f"north/{picture}"], drawn[f"south/{picture}"]
        assert np.array_equal(north[0], south_up[0])  # the same ground, drawn north up
        assert north[1] == south_up[1] == (0, 40, 20, 80)


def test_pictures_leave_nodata_uncoloured(tiny_scene, tiny_model, tmp_path, run_cli,
                                          monkeypatch) -> None:
    """The scene's left 8 columns are nodata: every PNG's heat there is NaN (drawn as no
    colour over the black of no imagery, as the GeoTIFFs hold NaN), not the network's output
    on the filled-in zeros (a probability of 0.4 drawn where nothing was seen)."""
    drawn: dict[str, np.ndarray] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[Path(path).stem] = heat

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--window", "0,0,96,96", "--box", "30,40,70,80",
                        "--out", tmp_path / "x")
    assert code == 0, err
    assert {"gradcam", "probability"} <= set(drawn)
    for heat in drawn.values():
        assert np.isnan(heat[:, :8]).all() and np.isfinite(heat[:, 8:]).all()


def test_pictures_keep_the_grounds_shape_on_oblong_pixels(tiny_scene, tiny_model, tmp_path,
                                                          run_cli, monkeypatch) -> None:
    """The PNGs of a scene of 0.5 m × 1 m pixels draw each pixel twice as tall as wide, as
    the ground is (they were drawn square: every landslide twice as wide as it is)."""
    drawn: dict[str, float] = {}

    def record(rgb: np.ndarray, heat: np.ndarray, path: Path, title: str | None = None,
               box: tuple[int, int, int, int] | None = None, aspect: float = 1.0) -> None:
        drawn[Path(path).stem] = aspect

    monkeypatch.setattr("slidemap.explain.run.save_overlay_png", record)
    oblong = {}
    for key in ("image", "dem"):
        with rasterio.open(tiny_scene[key]) as src:
            t = src.transform
            oblong[key] = write_raster(tmp_path / f"oblong_{key}.tif", src.read(),
                                       transform=Affine(t.a, 0, t.c, 0, 2 * t.e, t.f),
                                       nodata=src.nodata)
    code, err = run_cli("explain", oblong["image"], "--dem", oblong["dem"], "--model",
                        tiny_model, "--box", "0,0,20,20", "--out", tmp_path / "x")
    assert code == 0, err
    assert drawn == {"gradcam": pytest.approx(2.0), "probability": pytest.approx(2.0)}
