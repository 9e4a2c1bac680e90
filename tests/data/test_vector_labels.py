"""Labels drawn as polygons: rasterised window by window, in any CRS, the same as a label raster."""

from __future__ import annotations

import json
import sqlite3
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import yaml
from factories import (
    ORIGIN,
    TINY_TRAINING,
    UTM47,
    interrupt_at_epoch_2,
    run_config,
    tiny_bundle,
    write_config,
    write_raster,
)
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from slidemap.data.channels import InputSpec
from slidemap.data.scene import Scene
from slidemap.data.sources import shared_with_training
from slidemap.data.vectors import PolygonLayer
from slidemap.data.windows import grid_windows
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.suggest import overlaps_labels
from slidemap.io.modelfile import PredictDefaults, load_model, save_model
from slidemap.schema.config import load_config, parse_config
from slidemap.schema.values import is_vector
from slidemap.train import newsite
from slidemap.train.loop import train
from slidemap.train.newsite import site_config
from slidemap.workflows.inputs import DEFAULT_MODEL
from slidemap.workflows.newsite import check_site_inputs

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".shp": "ESRI Shapefile"}
TRAINING = {**TINY_TRAINING, "seed": 3}


def polygonise(mask: Path, values: tuple[int, ...]) -> list[shapely.Geometry]:
    """The regions of ``mask`` whose value is in ``values``, as polygons in its CRS."""
    with rasterio.open(mask) as ds:
        labels = ds.read(1)
        inside = np.isin(labels, values)
        return [shapely.geometry.shape(g) for g, _ in
                shapes(inside.astype(np.uint8), mask=inside, transform=ds.transform)]


def write_polygons(path: Path, geometries: list, crs: str = UTM47, layer: str = "labels",
                   append: bool = False, geometry_type: str = "Polygon") -> Path:
    """Write polygons (given in UTM 47N) to ``path``, reprojected to ``crs``."""
    if crs != UTM47:
        geometries = [shapely.transform(shapely.segmentize(g, 1.0), _reprojector(crs))
                      for g in geometries]
    wkb = np.array([shapely.to_wkb(g) for g in geometries], dtype=object)
    pyogrio.raw.write(path, wkb, [np.arange(len(geometries))], ["id"],
                      driver=DRIVERS[path.suffix], geometry_type=geometry_type, crs=crs,
                      layer=layer, append=append)
    return path


def _reprojector(crs: str):
    def run(xy: np.ndarray) -> np.ndarray:
        xs, ys = warp_transform(UTM47, crs, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])
    return run


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def labels_as_polygons(tiny_scene: dict, tmp_path: Path) -> dict[str, Path]:
    """The tiny scene's labels drawn as polygons: landslides, and the labelled area as AOI."""
    return {"polygons": write_polygons(tmp_path / "slides.gpkg",
                                       polygonise(tiny_scene["mask"], (1,))),
            "aoi": write_polygons(tmp_path / "aoi.gpkg", polygonise(tiny_scene["mask"], (0, 1)))}


def test_polygons_and_aoi_rasterise_to_the_label_raster(tiny_scene: dict,
                                                        labels_as_polygons: dict) -> None:
    expected = read_mask(tiny_scene["mask"])
    with Scene(tiny_scene["image"], mask=labels_as_polygons["polygons"],
               aoi=labels_as_polygons["aoi"]) as scene:
        whole = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
        windows = {(w.row_off, w.col_off): scene.read(w, (1,))["mask"]
                   for w in grid_windows(96, 96, 40, overlap=7)}
    np.testing.assert_array_equal(whole, expected)
    for (row, col), labels in windows.items():  # each window burnt on its own grid
        np.testing.assert_array_equal(labels, whole[row:row + 40, col:col + 40])


def test_without_aoi_everything_outside_the_polygons_is_background(
        tiny_scene: dict, labels_as_polygons: dict) -> None:
    with Scene(tiny_scene["image"], mask=labels_as_polygons["polygons"]) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    np.testing.assert_array_equal(labels, np.where(read_mask(tiny_scene["mask"]) == 1, 1, 0))


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_polygons_in_another_crs_land_on_the_same_pixels(tiny_scene: dict, tmp_path: Path,
                                                         suffix: str) -> None:
    slides = write_polygons(tmp_path / f"slides{suffix}", polygonise(tiny_scene["mask"], (1,)),
                            crs="EPSG:4326")
    aoi = write_polygons(tmp_path / f"aoi{suffix}", polygonise(tiny_scene["mask"], (0, 1)),
                         crs="EPSG:3857")
    with Scene(tiny_scene["image"], mask=slides, aoi=aoi) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    np.testing.assert_array_equal(labels, read_mask(tiny_scene["mask"]))


def test_a_zipped_shapefile_reads_as_the_polygons(tiny_scene: dict, tmp_path: Path) -> None:
    """Shapefiles travel zipped; GDAL reads the .zip in place, as QGIS does: labels, not a
    label raster that cannot be opened."""
    slides = write_polygons(tmp_path / "slides.shp", polygonise(tiny_scene["mask"], (1,)))
    archive = tmp_path / "slides.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for part in slides.parent.glob("slides.*"):
            if part != archive:
                bundle.write(part, part.name)
    assert is_vector(archive)
    with Scene(tiny_scene["image"], mask=archive) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    np.testing.assert_array_equal(labels, np.where(read_mask(tiny_scene["mask"]) == 1, 1, 0))


def test_an_aoi_also_restricts_a_label_raster(tiny_scene: dict, tmp_path: Path) -> None:
    box = shapely.box(469200.0 + 10, 3446200.0 - 20, 469200.0 + 30, 3446200.0 - 5)  # 0.5 m px
    aoi = write_polygons(tmp_path / "box.gpkg", [box])
    with Scene(tiny_scene["image"], mask=tiny_scene["mask"], aoi=aoi) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    expected = np.full((96, 96), 255, np.uint8)
    expected[10:40, 20:60] = read_mask(tiny_scene["mask"])[10:40, 20:60]
    np.testing.assert_array_equal(labels, expected)


def scene_config(tmp_path: Path, name: str, scene: dict) -> Path:
    return write_config(tmp_path / f"{name}.yaml", run_config(
        [scene], inputs={"image_bands": [1, 2, 3]}, training=TRAINING))


def test_training_from_polygons_gives_the_model_of_the_label_raster(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path) -> None:
    raster = scene_config(tmp_path, "raster", {"image": tiny_scene["image"],
                                               "mask": tiny_scene["mask"]})
    vector = scene_config(tmp_path, "vector", {"image": tiny_scene["image"],
                                               "mask": labels_as_polygons["polygons"],
                                               "aoi": labels_as_polygons["aoi"]})
    config = load_config(vector)
    assert config.train_scenes[0].aoi == labels_as_polygons["aoi"]
    from_raster = load_model(train(load_config(raster), tmp_path / "raster")).model.state_dict()
    from_vector = load_model(train(config, tmp_path / "vector")).model.state_dict()
    assert from_raster.keys() == from_vector.keys()
    for key, value in from_raster.items():
        assert value.equal(from_vector[key]), key


def test_training_on_ground_without_a_landslide_says_so(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path) -> None:
    """newsite refuses polygons that leave no landslide pixel inside the AOI; its config.yaml
    edited to another AOI and run with slidemap train trained a model that maps nothing,
    without a word."""
    x, y = ORIGIN
    corner = write_polygons(tmp_path / "corner.gpkg", [shapely.box(x + 4, y - 10, x + 15, y)])
    config = scene_config(tmp_path, "corner", {"image": tiny_scene["image"],
                                               "mask": labels_as_polygons["polygons"],
                                               "aoi": corner})
    with pytest.warns(SlidemapWarning, match=r"data.train has no landslide pixel .* maps none"):
        train(load_config(config), tmp_path / "run")


def test_a_spatial_split_of_one_scene_is_not_validation_on_training_data(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path) -> None:
    """Training on one half of a scene and validating on the other (disjoint AOIs, the split of
    the README's newsite example) warned "validation data is also training data", as one
    image file was named twice. It warns only where the labelled ground overlaps."""
    x, y = ORIGIN  # the image spans 48 m × 48 m from here
    aois = {name: write_polygons(tmp_path / f"{name}.gpkg", [shapely.box(*box)]) for name, box in
            (("north", (x, y - 24, x + 48, y)), ("south", (x, y - 48, x + 48, y - 24)),
             ("middle", (x, y - 30, x + 48, y - 18)))}

    def shared(train_aoi: Path | None, val_aoi: Path | None) -> str | None:
        scenes = [{"image": tiny_scene["image"], "mask": labels_as_polygons["polygons"],
                   **({"aoi": aoi} if aoi else {})} for aoi in (train_aoi, val_aoi)]
        config = load_config(write_config(tmp_path / "split.yaml", run_config(
            scenes[:1], scenes[1:], inputs={"image_bands": [1, 2, 3]}, training=TRAINING)))
        return shared_with_training((config.train_scenes, config.train_patches),
                                    (config.val_scenes, config.val_patches), config.inputs)

    assert shared(aois["north"], aois["south"]) is None  # they share an edge, no pixel
    assert shared(aois["north"], aois["middle"]) == (f"scene {tiny_scene['image']}, "
                                                     "overlapping areas of interest")
    assert shared(aois["north"], None) == f"scene {tiny_scene['image']}"
    assert shared(None, aois["south"]) == f"scene {tiny_scene['image']}"


def test_evaluate_scores_against_polygons_like_against_the_raster(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path, run_cli) -> None:
    prob = read_mask(tiny_scene["mask"]).astype(np.float32) * 0.9
    prob[60:70, 20:30] = 0.8  # false positives, to make the figures less trivial
    with rasterio.open(tiny_scene["image"]) as ds:
        profile = {"driver": "GTiff", "height": 96, "width": 96, "count": 1, "dtype": "float32",
                   "crs": ds.crs, "transform": ds.transform, "nodata": float("nan")}
    prob[:, :8] = np.nan
    with rasterio.open(tmp_path / "prob.tif", "w", **profile) as ds:
        ds.write(prob, 1)
    figures = []
    for truth, aoi in ((tiny_scene["mask"], None),
                       (labels_as_polygons["polygons"], labels_as_polygons["aoi"])):
        out = tmp_path / f"eval-{len(figures)}"
        args = ["evaluate", truth, "--prediction", tmp_path / "prob.tif", "--out", out]
        code, err = run_cli(*args, *(["--aoi", aoi] if aoi else []))
        assert code == 0, err
        figures.append(json.loads((out / "metrics.json").read_text())["metrics"])
    assert figures[0] == figures[1]
    assert 0 < figures[0]["precision"] < 1


def test_evaluate_refuses_to_score_nothing_and_writes_strict_json(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path, run_cli) -> None:
    """An AOI off the prediction leaves no pixel to score: an error, not F1 0 and exit 0; and
    a figure that is not a number (AUC with one class) is null in metrics.json, not NaN."""
    off = write_polygons(tmp_path / "off.gpkg",  # over the image's nodata columns only
                         [shapely.box(469200.0, 3446200.0 - 48, 469200.0 + 3, 3446200.0)])
    prob = tmp_path / "prob.tif"
    with rasterio.open(tiny_scene["image"]) as ds:
        write_raster(prob, np.full((96, 96), 0.9, np.float32), transform=ds.transform)
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", prob, "--aoi", off,
                        "--out", tmp_path / "none")
    assert code != 0 and "nothing to score" in err, err
    assert not (tmp_path / "none").exists()
    inside = write_polygons(tmp_path / "in.gpkg",  # background only
                            [shapely.box(469200.0 + 5, 3446200.0 - 5, 469200.0 + 10, 3446200.0)])
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", prob, "--aoi", inside,
                        "--out", tmp_path / "one-class")
    assert code == 0, err
    text = (tmp_path / "one-class" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["auc"] is None


def test_an_empty_label_file_warns_that_everything_is_background(tiny_scene: dict,
                                                                  tmp_path: Path) -> None:
    empty = tmp_path / "empty.gpkg"
    pyogrio.raw.write(empty, np.array([], dtype=object), [], [], driver="GPKG",
                      geometry_type="Polygon", crs=UTM47)
    with pytest.warns(SlidemapWarning, match="holds no polygon: every pixel of the image"):
        Scene(tiny_scene["image"], mask=empty).close()


@pytest.mark.parametrize("geometry", [None, shapely.to_wkb(shapely.Polygon())],
                         ids=["null", "empty"])
def test_features_without_a_geometry_are_no_polygon(tiny_scene: dict, tmp_path: Path,
                                                    geometry: bytes | None) -> None:
    """Rows added in QGIS's attribute table and never drawn: the layer has features but no
    extent, and reads as an empty layer (a warning, or the AOI's one-line error)."""
    undrawn = tmp_path / "undrawn.gpkg"
    pyogrio.raw.write(undrawn, np.array([geometry], dtype=object), [np.array([1])], ["id"],
                      driver="GPKG", geometry_type="Polygon", crs=UTM47)
    with pytest.warns(SlidemapWarning, match="holds no polygon: every pixel of the image"):
        Scene(tiny_scene["image"], mask=undrawn).close()
    with pytest.raises(SlidemapError, match=r"area of interest .* has no polygon"):
        Scene(tiny_scene["image"], mask=tiny_scene["mask"], aoi=undrawn)


def test_a_geopackage_of_several_layers_needs_the_layer_named(tiny_scene: dict,
                                                              tmp_path: Path) -> None:
    both = tmp_path / "both.gpkg"
    write_polygons(both, polygonise(tiny_scene["mask"], (1,)), layer="slides")
    write_polygons(both, polygonise(tiny_scene["mask"], (0, 1)), layer="aoi", append=True)
    with pytest.raises(SlidemapError,
                       match=r"has 2 geometry layers \(slides, aoi\).*\|layername=NAME"):
        Scene(tiny_scene["image"], mask=both)
    assert is_vector(f"{both}|layername=slides")
    with Scene(tiny_scene["image"], mask=f"{both}|layername=slides",
               aoi=f"{both}|layername=aoi") as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    np.testing.assert_array_equal(labels, read_mask(tiny_scene["mask"]))


def test_bad_label_files_are_one_line_errors(tiny_scene: dict, tmp_path: Path) -> None:
    points = tmp_path / "points.gpkg"
    pyogrio.raw.write(points, np.array([shapely.to_wkb(shapely.Point(469210, 3446190))],
                                       dtype=object), [], [], driver="GPKG",
                      geometry_type="Point", crs=UTM47)
    with pytest.raises(SlidemapError, match=r"Point features: labels .* must be polygons"):
        Scene(tiny_scene["image"], mask=points)
    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(0, 0, 10, 10)])
    with pytest.raises(SlidemapError, match="does not overlap the image"):
        Scene(tiny_scene["image"], mask=far)
    with pytest.raises(SlidemapError, match="does not exist"):
        Scene(tiny_scene["image"], mask=tmp_path / "missing.gpkg")
    with pytest.raises(SlidemapError, match=r"aoi must be a vector file"):
        parse_config({"data": {"train": [{"image": "a.tif", "mask": "m.gpkg",
                                          "aoi": "aoi.tif"}]}})


def test_projected_coordinates_in_a_geojson_without_crs_say_so(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path, run_cli) -> None:
    """A GeoJSON of UTM coordinates without a crs member reads as WGS 84 (RFC 7946): the
    error said only "does not overlap the image". Coordinates off the lon/lat range of a
    geographic CRS are named as what they likely are, on one line."""
    x, y = ORIGIN
    ring = shapely.geometry.mapping(shapely.box(x + 20, y - 40, x + 40, y - 20))["coordinates"]
    utm = tmp_path / "utm.geojson"
    utm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                            "coordinates": ring}}]}))
    for role, files in (("label file", {"mask": utm}),
                        ("area of interest", {"mask": labels_as_polygons["polygons"], "aoi": utm})):
        with pytest.raises(SlidemapError, match=rf"^{role} .*utm.geojson is in WGS 84 .* no "
                           r"longitudes and latitudes: likely projected coordinates in a file "
                           r"without a CRS"):
            Scene(tiny_scene["image"], **files)
    code, err = run_cli("evaluate", utm, "--prediction", tiny_scene["mask"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "likely projected" in err, err


def test_newsite_trains_on_polygons_and_maps_the_scene(tmp_path: Path, run_cli,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    rng = np.random.default_rng(1)
    image = rng.integers(40, 90, size=(3, 64, 64)).astype(np.uint8)
    image[:, 20:40, 10:30] += 100
    grid = from_origin(469200.0, 3446200.0, 2.0, 2.0)  # 2 m pixels: read as they are
    scene = write_raster(tmp_path / "site.tif", image, transform=grid)
    slide = shapely.box(469200.0 + 20, 3446200.0 - 80, 469200.0 + 60, 3446200.0 - 40)
    labels = write_polygons(tmp_path / "slides.geojson", [slide], crs="EPSG:4326")
    out = tmp_path / "site"
    code, err = run_cli("newsite", scene, labels, "--out", out)
    assert code == 0, err
    assert "trained in" in err
    for name in ("config.yaml", "model.safetensors", "map/site_prob.tif", "map/site_mask.tif",
                 "map/site_landslides.gpkg"):
        assert (out / name).exists(), name
    raw = yaml.safe_load((out / "config.yaml").read_text())
    assert raw["data"]["train"] == [{"image": str(scene), "mask": str(labels)}]
    assert "resolution_m" not in raw["inputs"]  # 2 m imagery is read at its own pixels
    code, err = run_cli("newsite", scene, labels, "--out", out)
    assert code != 0 and "exists" in err  # an earlier run is never replaced silently


def test_a_stopped_newsite_says_to_start_again_with_overwrite(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """newsite has no --resume: stopped mid-training, it told the user to rerun with --resume,
    and the rerun was refused with "pass --resume to continue it". Both now name --overwrite,
    which trains again."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 2, "select": "last"})
    rng = np.random.default_rng(1)
    image = rng.integers(40, 90, size=(3, 64, 64)).astype(np.uint8)
    image[:, 20:40, 10:30] += 100
    grid = from_origin(469200.0, 3446200.0, 2.0, 2.0)
    scene = write_raster(tmp_path / "site.tif", image, transform=grid)
    slide = shapely.box(469200.0 + 20, 3446200.0 - 80, 469200.0 + 60, 3446200.0 - 40)
    labels = write_polygons(tmp_path / "slides.geojson", [slide], crs="EPSG:4326")
    out = tmp_path / "site"
    with monkeypatch.context() as patched:
        interrupt_at_epoch_2(patched)
        code, err = run_cli("newsite", scene, labels, "--out", out)
    assert code == 130 and "--resume" not in err and "--overwrite" in err, err
    code, err = run_cli("newsite", scene, labels, "--out", out)
    assert code == 1 and "--resume" not in err and "pass --overwrite" in err, err
    code, err = run_cli("newsite", scene, labels, "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / "map" / "site_mask.tif").exists()


def test_newsite_checks_its_inputs_before_it_writes_anything(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Polygons off the scene or none at all fail before config.yaml or a folder appear, so the
    corrected rerun into the same --out works; the config it keeps names absolute paths, so
    `slidemap train config.yaml` runs from any folder."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    monkeypatch.chdir(tmp_path)
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, transform=from_origin(469200.0, 3446200.0, 2, 2))
    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(0, 0, 10, 10)])
    empty = tmp_path / "empty.gpkg"
    pyogrio.raw.write(empty, np.array([], dtype=object), [], [], driver="GPKG",
                      geometry_type="Polygon", crs=UTM47)
    for labels, message in ((far, "does not overlap"), (empty, "holds no polygon")):
        code, err = run_cli("newsite", "site.tif", labels.name, "--out", "run")
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
    slide = shapely.box(469200.0 + 20, 3446200.0 - 80, 469200.0 + 60, 3446200.0 - 40)
    write_polygons(tmp_path / "slides.gpkg", [slide], layer="slides")
    code, err = run_cli("newsite", "site.tif", "slides.gpkg|layername=slides", "--out", "run")
    assert code == 0, err
    raw = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert raw["data"]["train"] == [{"image": str(tmp_path / "site.tif"),  # the layer kept
                                     "mask": f"{tmp_path / 'slides.gpkg'}|layername=slides"}]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_val_f1"] is None  # no validation data: no F1, not a negated loss


def test_newsite_fits_its_training_windows_to_one_small_labelled_box(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """One box labelled in a scene fit no window of newsite's tile with a quarter of it
    labelled: newsite failed with "lower training.min_valid or training.tile", which it has no
    option for, and wrote no config.yaml to edit. It now trains on windows that fit the box,
    kept in config.yaml; too little ground for any window is refused before training."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "tile": 64, "epochs": 1,
                                              "select": "last"})
    image = np.random.default_rng(1).integers(40, 190, size=(3, 96, 96)).astype(np.uint8)
    scene = write_raster(tmp_path / "site.tif", image, transform=from_origin(*ORIGIN, 2, 2))
    x, y = ORIGIN
    slides = write_polygons(tmp_path / "slides.gpkg", [shapely.box(x + 44, y - 56, x + 56, y - 44)])
    box = write_polygons(tmp_path / "box.gpkg", [shapely.box(x + 40, y - 60, x + 80, y - 20)])
    code, err = run_cli("newsite", scene, slides, "--aoi", box, "--out", tmp_path / "run")
    assert code == 0, err  # 20 × 20 px labelled: a 64 px window holds 10 % of it, 32 px 39 %
    assert "training windows of 32 px" in err
    raw = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert raw["training"]["tile"] == 32
    speck = write_polygons(tmp_path / "speck.gpkg", [shapely.box(x + 44, y - 50, x + 50, y - 44)])
    code, err = run_cli("newsite", scene, slides, "--aoi", speck, "--out", tmp_path / "speck")
    assert code == 1 and len(err.strip().splitlines()) == 1, err  # 3 × 3 px: no 16 px window
    assert "label a larger area" in err and "training.tile" not in err
    assert not (tmp_path / "speck").exists()


def test_newsite_takes_a_gdal_name_for_the_image_and_dem(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAGE and --dem were paths, which fold the '//' of /vsizip//abs/d.zip/o.tif and which
    the run config turned into paths again: a name predict reads was 'does not exist'. The
    config it keeps names a relative archive absolutely, so it trains from any folder."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    monkeypatch.chdir(tmp_path)
    grid = from_origin(469200.0, 3446200.0, 2.0, 2.0)
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, transform=grid)
    rows, cols = np.mgrid[0:64, 0:64]
    write_raster(tmp_path / "dsm.tif", (3000.0 + 0.3 * cols + 0.1 * rows ** 1.5).astype(
        np.float32), transform=grid)
    with zipfile.ZipFile(tmp_path / "delivery.zip", "w") as bundle:
        bundle.write(tmp_path / "site.tif", "site.tif")
        bundle.write(tmp_path / "dsm.tif", "dsm.tif")
    slide = shapely.box(469200.0 + 20, 3446200.0 - 80, 469200.0 + 60, 3446200.0 - 40)
    write_polygons(tmp_path / "slides.gpkg", [slide])
    code, err = run_cli("newsite", "/vsizip/delivery.zip/site.tif", "slides.gpkg", "--dem",
                        f"/vsizip/{tmp_path}/delivery.zip/dsm.tif", "--out", "run")
    assert code == 0, err
    raw = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert raw["data"]["train"] == [{"image": f"/vsizip/{tmp_path}/delivery.zip/site.tif",
                                     "mask": str(tmp_path / "slides.gpkg"),
                                     "dem": f"/vsizip/{tmp_path}/delivery.zip/dsm.tif"}]
    assert (tmp_path / "run" / "map" / "site_prob.tif").exists()


def test_a_flat_dem_is_refused_before_training_not_in_an_unloadable_model(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat DEM gives terrain channels of one value: training saved a model whose std of 0
    every command then refused as a 'malformed' sidecar to 're-export'."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    monkeypatch.chdir(tmp_path)
    grid = from_origin(469200.0, 3446200.0, 2.0, 2.0)
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, transform=grid)
    write_raster(tmp_path / "flat.tif", np.full((64, 64), 3000.0, np.float32), transform=grid)
    slide = shapely.box(469200.0 + 20, 3446200.0 - 80, 469200.0 + 60, 3446200.0 - 40)
    write_polygons(tmp_path / "slides.gpkg", [slide])
    code, err = run_cli("newsite", "site.tif", "slides.gpkg", "--dem", "flat.tif", "--out", "run")
    assert (code, err.strip()) == (1, "error: input channel relief8m is 0 over every training "
                                      "pixel (a flat DEM, an empty band?): a model cannot learn "
                                      "from it; leave it out of inputs, or train on ground "
                                      "where it varies")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_newsite_refuses_a_scene_in_a_local_crs_before_it_trains(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict refuses a scene with no datum; newsite trained on it for the whole run, then its
    final predict refused it. Now refused first, with predict's line and nothing written (and
    polygons in a real CRS no longer fail with PROJ's traceback on the way)."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    monkeypatch.chdir(tmp_path)
    local = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                         'AXIS["Northing",NORTH]]')
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, crs=local,
                 transform=from_origin(1000.0, 2000.0, 2.0, 2.0))
    slide = shapely.to_wkb(shapely.box(1020.0, 1880.0, 1060.0, 1960.0))
    for crs in (local.to_wkt(), UTM47):
        pyogrio.raw.write(tmp_path / "slides.gpkg", np.array([slide], dtype=object),
                          [np.arange(1)], ["id"], driver="GPKG", geometry_type="Polygon",
                          crs=crs)
        code, err = run_cli("newsite", "site.tif", "slides.gpkg", "--out", "run")
        assert (code, err.strip()) == (1, (
            "error: image site.tif is in a local (engineering) CRS with no datum, which cannot "
            "be placed on the Earth (the inventory's longitudes, the STAC footprint): assign "
            "its real CRS (e.g. gdal_edit.py -a_srs EPSG:32647) or warp it onto one")), err
        assert not (tmp_path / "run").exists()
        (tmp_path / "slides.gpkg").unlink()


def test_newsite_refuses_a_scene_too_small_to_map_before_it_trains(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64 px scene of 0.5 m pixels is 16 px at the model's 2 m: newsite trained the whole
    run, wrote its model, then its map was refused as too small. Now refused first, with
    predict's line and nothing written."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    monkeypatch.chdir(tmp_path)
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, transform=from_origin(469200.0, 3446200.0,
                                                                     0.5, 0.5))
    slide = shapely.box(469200.0 + 5, 3446200.0 - 20, 469200.0 + 15, 3446200.0 - 10)
    write_polygons(tmp_path / "slides.gpkg", [slide])
    code, err = run_cli("newsite", "site.tif", "slides.gpkg", "--out", "run")
    assert (code, err.strip()) == (1, "error: image site.tif is 64 × 64 px, too small for this "
                                      "model: it needs at least 128 px a side"), err
    assert not (tmp_path / "run").exists()


def test_polygons_that_cannot_reach_a_local_grid_are_refused_on_one_line(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """PROJ knows no way between a local (engineering) CRS and a real one: train, finetune and
    evaluate failed with its traceback where the labels or the AOI were reprojected. Now one
    line that names both CRSs and the way out, before anything is written."""
    monkeypatch.chdir(tmp_path)
    local = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                         'AXIS["Northing",NORTH]]')
    grid = from_origin(1000.0, 2000.0, 2.0, 2.0)
    image = np.random.default_rng(1).integers(40, 190, size=(3, 64, 64)).astype(np.uint8)
    write_raster(tmp_path / "site.tif", image, crs=local, transform=grid)
    write_raster(tmp_path / "prob.tif", np.full((64, 64), 0.5, np.float32), crs=local,
                 transform=grid)
    slide = np.array([shapely.to_wkb(shapely.box(1020.0, 1880.0, 1060.0, 1960.0))], object)
    for name, crs in (("local.gpkg", local.to_wkt()), ("utm.gpkg", UTM47)):
        pyogrio.raw.write(tmp_path / name, slide, [np.arange(1)], ["id"], driver="GPKG",
                          geometry_type="Polygon", crs=crs)
    write_config(tmp_path / "run.yaml", run_config(
        [{"image": tmp_path / "site.tif", "mask": tmp_path / "utm.gpkg"}],
        inputs={"image_bands": [1, 2, 3]}, training=TRAINING))
    line = ("is in WGS 84 / UTM zone 47N (EPSG:32647), which cannot be reprojected to the "
            "image's CRS site grid: save the polygons in the image's CRS, or assign the image "
            "its real CRS (e.g. gdal_edit.py -a_srs EPSG:32647)")
    code, err = run_cli("train", "run.yaml", "--out", "run")
    assert (code, err.strip()) == (1, f"error: label file {tmp_path / 'utm.gpkg'} {line}"), err
    code, err = run_cli("evaluate", "local.gpkg", "--prediction", "prob.tif", "--aoi",
                        "utm.gpkg", "--out", "scores")
    assert (code, err.strip()) == (1, f"error: area of interest utm.gpkg {line}"), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "scores").exists()


def test_newsite_refuses_labels_with_no_landslide_on_the_labelled_ground(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path) -> None:
    """Polygons all outside the AOI, or beside the image (their extent spanning it), leave no
    landslide pixel to learn from: refused, not a model that maps nothing."""
    x, y = ORIGIN
    corner = write_polygons(tmp_path / "corner.gpkg", [shapely.box(x + 4, y - 10, x + 15, y)])
    with pytest.raises(SlidemapError, match=r"lies inside the area of interest .*corner.gpkg"):
        check_site_inputs(tiny_scene["image"], labels_as_polygons["polygons"], corner, None)
    beside = write_polygons(tmp_path / "beside.gpkg", [shapely.box(x - 30, y - 40, x - 10, y),
                                                       shapely.box(x + 60, y - 40, x + 80, y)])
    with pytest.raises(SlidemapError, match=r"no polygon of label file .* lies on the image"):
        check_site_inputs(tiny_scene["image"], beside, None, None)
    check_site_inputs(tiny_scene["image"], labels_as_polygons["polygons"],
                      labels_as_polygons["aoi"], None)


def test_newsite_is_not_fooled_by_the_sliver_of_a_polygon_beside_the_image(
        tiny_scene: dict, tmp_path: Path) -> None:
    """Polygons beside the image sharing its edges, saved in WGS 84, come back with slivers of
    float error inside it: an area above 0 passed the check and newsite trained on no
    landslide. Ground counts above a pixel's area, as suggest's skip counts it."""
    x, y = ORIGIN  # the image spans 48 m × 48 m from here
    beside = [shapely.box(x - 30, y - 48, x, y), shapely.box(x + 48, y - 48, x + 70, y),
              shapely.box(x, y, x + 48, y + 20)]
    wgs84 = write_polygons(tmp_path / "beside.geojson", beside, crs="EPSG:4326")
    with Scene(tiny_scene["image"], mask=wgs84) as scene:
        layer = PolygonLayer(wgs84, "label file", scene.profile["crs"])
        area = layer.area_within(shapely.box(*scene.bounds))
        assert 0 < area < 0.25  # a sliver, less than a 0.5 m pixel
        assert overlaps_labels([layer], scene.bounds, 0.25) is False
    with pytest.raises(SlidemapError, match=r"no polygon of label file .* lies on the image"):
        check_site_inputs(tiny_scene["image"], wgs84, None, None)
    four_pixels_in = write_polygons(tmp_path / "in.geojson", [shapely.box(x - 30, y - 1, x + 1, y)],
                                  crs="EPSG:4326")  # 1 m × 1 m inside: 4 pixels
    check_site_inputs(tiny_scene["image"], four_pixels_in, None, None)


def test_overlapping_parts_of_one_polygon_count_as_labelled_where_they_are_burnt(
        tiny_scene: dict, tmp_path: Path) -> None:
    """An AOI saved as one MultiPolygon whose parts overlap (QGIS's Collect geometries of an
    AOI and a box drawn across it) is burnt as the union of its parts: the labelled-ground
    check measured it repaired by make_valid, which keeps only their symmetric difference, so
    newsite refused landslides drawn in the overlap and suggest offered a box there again."""
    x, y = ORIGIN
    aoi = write_polygons(tmp_path / "aoi.gpkg", [shapely.MultiPolygon([
        shapely.box(x + 10, y - 40, x + 30, y - 5), shapely.box(x + 20, y - 30, x + 45, y - 10)])],
        geometry_type="MultiPolygon")
    slides = write_polygons(tmp_path / "slides.gpkg", [shapely.box(x + 22, y - 28, x + 28, y - 12)])
    with Scene(tiny_scene["image"], mask=slides, aoi=aoi) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
        layer = PolygonLayer(aoi, "labelled areas", scene.profile["crs"])
    assert int((labels == 1).sum()) == 12 * 32  # the slide, 6 m × 16 m, all inside the AOI
    check_site_inputs(tiny_scene["image"], slides, aoi, None)
    assert overlaps_labels([layer], (x + 21, y - 29, x + 29, y - 11), 0.25)


def test_newsite_refuses_a_dem_its_starting_model_cannot_read(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path) -> None:
    rgb = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "rgb")
    with pytest.raises(SlidemapError, match="the DEM would go unused: drop --dem"):
        site_config(tiny_scene["image"], labels_as_polygons["polygons"], init=rgb,
                    dem=tiny_scene["dem"])


def test_newsite_from_a_model_file_takes_its_channels(tiny_scene: dict, tiny_model: Path,
                                                      labels_as_polygons: dict) -> None:
    with pytest.raises(SlidemapError, match="pass --dem"):
        site_config(tiny_scene["image"], labels_as_polygons["polygons"], init=tiny_model)
    raw = site_config(tiny_scene["image"], labels_as_polygons["polygons"], init=tiny_model,
                      dem=tiny_scene["dem"])
    config = parse_config(raw)
    assert config.init == tiny_model
    assert config.inputs == load_model(tiny_model).inputs
    assert (config.model.name, config.model.width) == ("unet", 4)


def test_newsite_names_its_start_so_that_train_finds_it_from_any_folder(
        tiny_scene: dict, tiny_model: Path, labels_as_polygons: dict, monkeypatch) -> None:
    """A start named relatively and without its suffix (models/slidemap-jinsha-unet-terrain)
    went into config.yaml as given, which ``slidemap train`` run from another folder did not
    find."""
    monkeypatch.chdir(tiny_model.parent)
    raw = site_config(tiny_scene["image"], labels_as_polygons["polygons"],
                      init=Path(tiny_model.stem), dem=tiny_scene["dem"])
    assert raw["init"] == str(tiny_model.absolute())


def test_newsite_from_a_model_file_maps_with_its_windows_and_scales(
        tiny_scene: dict, labels_as_polygons: dict, tmp_path: Path, run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--init kept the start's channels and resolution but mapped with 256/64 px windows at
    scale 1, not the windows and scales its file says it is run with."""
    monkeypatch.setattr(newsite, "TRAINING", {**TRAINING, "epochs": 1, "select": "last"})
    start = tiny_bundle(mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0])
    start.predict = PredictDefaults(tile=48, overlap=8, scales=(1.0, 0.5))
    init = save_model(start, tmp_path / "start")
    out = tmp_path / "site"
    code, err = run_cli("newsite", tiny_scene["image"], labels_as_polygons["polygons"], "--dem",
                        tiny_scene["dem"], "--init", init, "--out", out)
    assert code == 0, err
    assert load_model(out / "model").predict == start.predict
    with rasterio.open(out / "map" / f"{tiny_scene['image'].stem}_prob.tif") as ds:
        assert "tile=48 overlap=8 scales=1,0.5" in ds.tags()["SLIDEMAP_OPTIONS"]
    assert yaml.safe_load((out / "config.yaml").read_text())["predict"] == start.predict.to_dict()


def test_newsite_from_scratch_reads_the_default_models_terrain_not_elevation(
        tiny_scene: dict, labels_as_polygons: dict) -> None:
    """With a DEM, a new site's model takes the descriptors the protocol chose for the default
    model, so its map does not move with the DEM's datum; without one, RGB alone."""
    raw = site_config(tiny_scene["image"], labels_as_polygons["polygons"], dem=tiny_scene["dem"])
    channels = parse_config(raw).inputs.channels
    assert "dem" not in channels
    assert channels == load_model(DEFAULT_MODEL).inputs.channels
    raw = site_config(tiny_scene["image"], labels_as_polygons["polygons"])
    assert parse_config(raw).inputs.channels == ["band1", "band2", "band3"]


def test_newsite_terrain_radii_keep_their_pixels_on_a_coarse_grid(tmp_path: Path) -> None:
    """On 30 m pixels the 8 and 32 m reliefs would both be one pixel: one channel twice."""
    coarse = from_origin(469200.0, 3446200.0, 30.0, 30.0)
    image = write_raster(tmp_path / "coarse.tif", np.full((3, 16, 16), 90, np.uint8),
                         transform=coarse, nodata=0)
    dem = write_raster(tmp_path / "coarse_dem.tif", np.zeros((16, 16), np.float32),
                       transform=coarse)
    labels = write_raster(tmp_path / "coarse_mask.tif", np.zeros((16, 16), np.uint8),
                          transform=coarse)
    inputs = parse_config(site_config(image, labels, dem=dem)).inputs
    assert inputs.relief_m == (120.0, 480.0, 1920.0) and inputs.roughness_m == 60.0
    assert inputs.resolution_m is None  # the image's own 30 m pixels


def test_a_window_reads_only_the_polygons_near_it(tiny_scene: dict, tmp_path: Path) -> None:
    west, north = 469200.0, 3446200.0
    squares = [shapely.box(west + 4 * i, north - 4 * j - 2, west + 4 * i + 2, north - 4 * j)
               for i in range(12) for j in range(12)]  # 144 slides of 2 m, 4 m apart
    layer = PolygonLayer(write_polygons(tmp_path / "many.gpkg", squares, crs="EPSG:4326"),
                         "label file", CRS.from_string(UTM47))
    found = layer.geometries((west + 3, north - 9, west + 9, north - 3))
    assert 1 <= len(found) <= 4  # the squares around (i, j) = (1, 1), not all 144
    assert any(g.intersects(shapely.box(west + 4, north - 6, west + 6, north - 4)) for g in found)


def test_a_predicted_inventory_reads_back_as_labels(tiny_scene, tiny_model, tmp_path) -> None:
    """predict's GeoPackage also holds a layer_styles table (as QGIS writes one): the polygons,
    corrected in QGIS or not, must still read as labels without naming their layer."""
    from slidemap import api
    from slidemap.infer.predict import PredictOptions

    mapped = api.predict(tiny_scene["image"], tmp_path / "map", tiny_scene["dem"], tiny_model,
                         PredictOptions(tile=48, overlap=16, precision="fp32"),
                         min_area_m2=0, simplify_m=0)
    assert "layer_styles" in [row[0] for row in pyogrio.list_layers(mapped.inventory)]
    scored = api.evaluate(mapped.inventory, prediction=mapped.mask).metrics
    assert scored["pixels"] > 0
    if mapped.landslides:  # the outlines of the mask's own pixels burn back onto them
        assert scored["f1"] == pytest.approx(1.0)


def test_measured_polygons_read_without_warnings(tiny_scene: dict, tmp_path: Path) -> None:
    """Polygons with M values (QGIS writes them from some tools): the labels are those of the
    plain polygons, and pyogrio's note that it drops M prints nothing."""
    plain = write_polygons(tmp_path / "plain.gpkg", polygonise(tiny_scene["mask"], (1,)))
    measured = write_polygons(tmp_path / "measured.gpkg", polygonise(tiny_scene["mask"], (1,)))
    with sqlite3.connect(measured) as db:  # pyogrio writes no M: give the geometries one
        (table, srs), = db.execute("select table_name, srs_id from gpkg_geometry_columns")
        for (trigger,) in db.execute("select name from sqlite_master where type = 'trigger'"
                                     ).fetchall():
            db.execute(f'drop trigger "{trigger}"')
        db.execute("update gpkg_geometry_columns set m = 1")
        for fid, blob in db.execute(f'select fid, geom from "{table}"').fetchall():
            header = 8 + {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 7]
            polygon = shapely.from_wkb(blob[header:])
            with_m = shapely.from_wkt(shapely.to_wkt(polygon).replace("POLYGON", "POLYGON M")
                                      .replace(",", " 1,").replace("))", " 1))"))
            db.execute(f'update "{table}" set geom = ? where fid = ?',
                       (b"GP\x00\x01" + struct.pack("<i", srs)
                        + shapely.to_wkb(with_m, flavor="iso", byte_order=1), fid))
    with warnings.catch_warnings(record=True) as shown, \
            Scene(tiny_scene["image"], mask=measured) as scene:
        labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
    assert not [w for w in shown if "Measured" in str(w.message)]
    with Scene(tiny_scene["image"], mask=plain) as scene:
        np.testing.assert_array_equal(labels, scene.read(Window(0, 0, 96, 96), (1,))["mask"])


def test_rings_left_open_or_of_two_points_read_as_qgis_draws_them(tiny_scene: dict,
                                                                  tmp_path: Path) -> None:
    """A hand-edited GeoJSON ring left unclosed is read by GDAL (with a note) and a ring of two
    points has no area; both ended in a GEOS traceback. The first is closed, the second burns
    nothing, as QGIS draws them."""
    x, y = ORIGIN
    square = [[x + 20, y - 15], [x + 40, y - 15], [x + 40, y - 35], [x + 20, y - 35]]  # 0.5 m px
    drawn = tmp_path / "drawn.geojson"
    drawn.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32647"}},
        "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}}
                     for ring in (square, [[x + 5, y - 5], [x + 10, y - 5]])]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's note on the open ring
        with Scene(tiny_scene["image"], mask=drawn) as scene:
            labels = scene.read(Window(0, 0, 96, 96), (1,))["mask"]
            landslides = scene.labels_landslides
    np.testing.assert_array_equal(labels, np.where(read_mask(tiny_scene["mask"]) == 1, 1, 0))
    assert landslides
