"""GIS edge cases: south-up and rotated grids, STAC footprints, GDAL errors on a full or
read-only disk, relative archive names, partial DEMs and georeferences that are not a grid."""

from __future__ import annotations

import errno
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely
from factories import GRID, TINY_TRAINING, run_config, write_config, write_raster
from rasterio._err import CPLE_AppDefinedError
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from slidemap import api
from slidemap.data.names import absolute_name
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.predict import PredictOptions
from slidemap.io.atomic import atomic_path, scratch_path, staged
from slidemap.io.provenance import command_line, provenance, recorded_threshold
from slidemap.io.rasters import RasterOutputs, writing
from slidemap.io.stac import output_item, read_item
from slidemap.report.mapview import imagery, map_grid
from slidemap.train.adapt import AdaptOptions

OPTIONS = PredictOptions(tile=48, overlap=16, batch_size=4)
SOUTH = 3446000.0
SOUTH_UP = Affine(0.5, 0.0, 469200.0, 0.0, 0.5, SOUTH)  # row 0 is the southern edge


# -- the report's map ------------------------------------------------------------------------

def _south_up_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A south-up image, bright in its northern half, and a prediction mask on its grid with
    no data along the northern edge (array rows 56..63 lie northmost)."""
    image = np.full((3, 64, 64), 50, np.uint8)
    image[:, 32:] = 200
    mask = np.zeros((64, 64), np.uint8)
    mask[56:] = 255
    return (write_raster(tmp_path / "south_up.tif", image, transform=SOUTH_UP, nodata=0),
            write_raster(tmp_path / "south_up_mask.tif", mask, transform=SOUTH_UP, nodata=255))


def test_a_south_up_map_has_the_north_at_the_top(tmp_path) -> None:
    image, mask = _south_up_scene(tmp_path)
    grid = map_grid(mask)
    assert grid.transform.e < 0  # row 0 of what imshow draws is the northern edge
    assert grid.extent == pytest.approx((469200.0, 469232.0, SOUTH, SOUTH + 32.0))
    assert not grid.valid[:8].any() and grid.valid[8:].all()  # the no data lies north
    picture = imagery(str(image), grid)
    assert (picture[:, :32] == 200).all() and (picture[:, 32:] == 50).all()


def _rotated(tmp_path: Path, crs: str | None) -> tuple[Path, Path, Affine]:
    transform = GRID @ Affine.rotation(20)
    image = np.full((3, 64, 64), 50, np.uint8)
    image[:, 10:20, 40:50] = 220
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return (write_raster(tmp_path / "rotated.tif", image, crs=crs, transform=transform,
                             nodata=0),
                write_raster(tmp_path / "rotated_mask.tif", np.zeros((64, 64), np.uint8),
                             crs=crs, transform=transform, nodata=255), transform)


@pytest.mark.parametrize("crs", ["EPSG:32647", None])
def test_a_rotated_map_is_warped_north_up_where_it_lies(tmp_path, crs) -> None:
    image, mask, transform = _rotated(tmp_path, crs)
    grid = map_grid(mask)
    assert grid.transform.b == grid.transform.d == 0 and grid.transform.e < 0
    left, right, bottom, top = grid.extent
    for corner in ((0, 0), (64, 0), (64, 64), (0, 64)):
        x, y = transform @ corner
        assert left - 1e-6 <= x <= right + 1e-6 and bottom - 1e-6 <= y <= top + 1e-6
    col, row = ~grid.transform @ (transform @ (45, 15))  # the bright block's centre
    picture = imagery(str(image), grid)
    assert picture[0, int(row), int(col)] == pytest.approx(220)
    assert grid.valid[int(row), int(col)]
    assert not grid.valid[0, 0] and not grid.valid[-1, -1]  # outside the rotated footprint


# -- STAC ------------------------------------------------------------------------------------

def _item_grid(transform: Affine) -> dict:
    return {"crs": CRS.from_epsg(32647), "transform": transform, "width": 64, "height": 48}


@pytest.mark.parametrize("transform", [GRID, SOUTH_UP, GRID @ Affine.rotation(30)],
                         ids=["north-up", "south-up", "rotated"])
def test_the_output_item_bbox_is_sorted_and_its_footprint_counter_clockwise(transform
                                                                             ) -> None:
    item = output_item("scene", {}, _item_grid(transform), None, {}, None)
    minx, miny, maxx, maxy = item.properties["proj:bbox"]
    corners = [transform @ c for c in ((0, 0), (64, 0), (64, 48), (0, 48))]
    assert (minx, miny) == pytest.approx(np.min(corners, axis=0).tolist())
    assert (maxx, maxy) == pytest.approx(np.max(corners, axis=0).tolist())
    ring = item.geometry["coordinates"][0]
    assert shapely.LinearRing(ring).is_ccw
    west, south, east, north = item.bbox
    assert west < east and south < north


def test_a_crs_without_an_epsg_code_is_given_as_wkt2_in_the_item() -> None:
    """proj:wkt2 is WKT2 (ISO 19162:2019) as the projection extension defines it; rasterio's
    to_wkt() gives WKT1 (GDAL's dialect) unless asked for another."""
    crs = CRS.from_proj4("+proj=tmerc +lat_0=31 +lon_0=98.7 +k=1 +x_0=500000 +y_0=0 "
                         "+ellps=WGS84 +units=us-ft +no_defs")
    grid = {"crs": crs, "transform": GRID, "width": 64, "height": 48}
    wkt = output_item("scene", {}, grid, None, {}, None).properties["proj:wkt2"]
    assert wkt.startswith("PROJCRS[") and "LENGTHUNIT[\"US survey foot\"" in wkt
    assert CRS.from_wkt(wkt) == crs


def test_the_bbox_of_a_scene_across_the_antimeridian_runs_from_west_to_east_over_it() -> None:
    """RFC 7946 (5.2): a box across the antimeridian has west > east; [-180, 180] would put
    the scene at every longitude of its latitudes for a catalogue's search."""
    transform = Affine(10.0, 0.0, 785780.0, 0.0, -10.0, 3447000.0)  # EPSG:32660, 31.1° N
    grid = {"crs": CRS.from_epsg(32660), "transform": transform, "width": 64, "height": 48}
    item = output_item("scene", {}, grid, None, {}, None)
    west, south, east, north = item.bbox
    assert 179.99 < west < 180.0 and -180.0 < east < -179.99  # 640 m across
    parts = shapely.geometry.shape(item.geometry).geoms
    assert south == min(p.bounds[1] for p in parts)
    assert north == max(p.bounds[3] for p in parts)


# -- full and read-only disks ----------------------------------------------------------------

def test_a_gdal_error_in_the_cog_copy_is_one_line(tmp_path, monkeypatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise CPLE_AppDefinedError(1, 1, "TIFFRewriteDirectory:Error fetching directory count")

    monkeypatch.setattr(rasterio.shutil, "copy", full_disk)
    profile = {"crs": "EPSG:32647", "transform": GRID, "width": 32, "height": 32}
    prob, mask = tmp_path / "scene_prob.tif", tmp_path / "scene_mask.tif"
    with pytest.raises(SlidemapError) as caught, RasterOutputs(profile, prob, mask) as outputs:
        outputs.write(Window(0, 0, 32, 32), np.full((32, 32), 0.7, np.float32),
                      np.ones((32, 32), bool), 0.5)
    assert str(caught.value) == (f"cannot write {prob} (TIFFRewriteDirectory:Error fetching "
                                 f"directory count): check free disk space and that {tmp_path} "
                                 "is writable")
    assert os.listdir(tmp_path) == []  # no temporary left behind


def test_writing_turns_any_gdal_error_into_one_line(tmp_path) -> None:
    with pytest.raises(SlidemapError, match="check free disk space"), \
            writing(tmp_path / "out.tif"):
        raise CPLE_AppDefinedError(1, 1, "Cannot read 13491 bytes at offset 81900")


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing any file fails as on a read-only file system, as writing does."""
    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_read_only_folder_reports_the_write_not_the_clean_up(tmp_path, monkeypatch) -> None:
    _read_only(monkeypatch)
    target = tmp_path / "scene_prob.tif"
    with pytest.raises(SlidemapError) as caught, atomic_path(target) as tmp:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))
    assert str(caught.value) == (f"cannot write {target} (Read-only file system): check free "
                                 f"disk space and that {tmp_path} is writable")
    with pytest.raises(SlidemapError, match=r"cannot write .*scene_mask\.tif \(Read-only"), \
            staged({"mask": tmp_path / "scene_mask.tif"}) as tmps:
        raise OSError(errno.EROFS, "Read-only file system", str(tmps["mask"]))
    with pytest.raises(SlidemapError, match="the real error"), scratch_path(target):
        raise SlidemapError("the real error")


# -- names that other folders can open -------------------------------------------------------

def test_relative_archive_and_subdataset_names_are_made_absolute(tmp_path, monkeypatch
                                                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_name("/vsizip/delivery.zip/ortho.tif") == \
        f"/vsizip/{tmp_path}/delivery.zip/ortho.tif"
    assert absolute_name("/vsizip/{sub/d.zip}/o.tif") == f"/vsizip/{{{tmp_path}/sub/d.zip}}/o.tif"
    assert absolute_name("/vsizip//vsitar/r.tar/x.zip/y.tif") == \
        f"/vsizip//vsitar/{tmp_path}/r.tar/x.zip/y.tif"
    (tmp_path / "scene.h5").write_bytes(b"")
    (tmp_path / "scene.tif").write_bytes(b"")
    assert absolute_name('HDF5:"scene.h5"://img') == f'HDF5:"{tmp_path}/scene.h5"://img'
    for kept in ("/vsizip//data/d.zip/o.tif", "/vsizip//vsicurl/https://x.org/d.zip/o.tif",
                 "https://x.org/o.tif", "s3://bucket/o.tif", "GTIFF_DIR:1:scene.tif",
                 "PG:dbname=gis table=dem", 'HDF5:"absent.h5"://img'):
        assert absolute_name(kept) == kept
    tags = provenance([], 0.5, {"image": "scene.tif", "dem": "/vsizip/delivery.zip/dsm.tif"})
    assert tags["SLIDEMAP_IMAGE"] == str(tmp_path / "scene.tif")
    assert tags["SLIDEMAP_DEM"] == f"/vsizip/{tmp_path}/delivery.zip/dsm.tif"


def test_a_prediction_from_a_relative_zip_reads_back_from_another_folder(
        tiny_scene, tiny_model, tmp_path, monkeypatch) -> None:
    with zipfile.ZipFile(tmp_path / "delivery.zip", "w") as bundle:
        bundle.write(tiny_scene["image"], "ortho.tif")
        bundle.write(tiny_scene["dem"], "dsm.tif")
    monkeypatch.chdir(tmp_path)
    result = api.predict("/vsizip/delivery.zip/ortho.tif", Path("out"),
                         "/vsizip/delivery.zip/dsm.tif", tiny_model, OPTIONS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    inputs = read_item(tmp_path / result.stac)
    assert inputs.image == f"/vsizip/{tmp_path}/delivery.zip/ortho.tif"
    assert inputs.dem == f"/vsizip/{tmp_path}/delivery.zip/dsm.tif"
    with rasterio.open(tmp_path / result.prob) as prob, rasterio.open(inputs.image) as image:
        assert prob.tags()["SLIDEMAP_IMAGE"] == inputs.image
        assert image.shape == prob.shape
    assert json.loads((tmp_path / result.stac).read_text())["assets"]["dem"]["href"] == \
        inputs.dem


# -- scenes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("adapt", [None, AdaptOptions(windows=8, rounds=1, keep=(0.5, 0.5),
                                                    tile=32, batch_size=4)])
def test_a_partial_dem_warns_once_naming_the_image(tiny_scene, tiny_model, tmp_path,
                                                   adapt) -> None:
    """Also with --adapt, whose scene read comes before the prediction's."""
    with rasterio.open(tiny_scene["dem"]) as src:
        dsm, transform = src.read(1), src.transform
    half = write_raster(tmp_path / "half.tif", dsm[:, 48:].copy(),
                        transform=transform @ Affine.translation(48, 0), nodata=float("nan"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.predict(tiny_scene["image"], tmp_path / "out", half, tiny_model, OPTIONS,
                    adapt=adapt)
    messages = [str(w.message) for w in caught if issubclass(w.category, SlidemapWarning)
                and "covers only" in str(w.message)]
    assert messages == [f"DEM {half} covers only 50% of image {tiny_scene['image']}: the rest "
                        "is mapped as no data; pass a DEM of the whole scene"]


def test_an_image_with_a_crs_but_no_geotransform_is_refused(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        path = write_raster(tmp_path / "no_transform.tif", np.ones((3, 40, 40), np.uint8),
                            transform=Affine.identity())
    with pytest.raises(SlidemapError) as caught:
        Scene(path)
    assert str(caught.value) == (
        f"image {path} has a CRS but no geotransform (where its pixels lie is unknown): "
        "georeference it (e.g. gdal_edit.py -a_ullr ULX ULY LRX LRY, or gdalwarp with ground "
        "control points)")
    Scene(path, require_crs=False).close()  # a report's pixel-grid rasters stay readable


LOCAL_GRID = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                          'AXIS["Northing",NORTH]]')


@pytest.mark.parametrize("image_crs", [LOCAL_GRID, "EPSG:32647"])
def test_a_local_engineering_crs_is_refused_before_mapping(tmp_path, tiny_model,
                                                           image_crs) -> None:
    """A site grid with no datum cannot give the inventory's longitudes or the STAC footprint,
    nor be reprojected to a real CRS: refused on one line before the model runs (predict ran
    it, then failed with PROJ's traceback while writing the inventory; a DEM on such a grid
    beside an image in a real CRS died with GDAL's CPLE_NotSupportedError while aligned)."""
    path = write_raster(tmp_path / "site.tif", np.full((3, 40, 40), 90, np.uint8),
                        crs=image_crs)
    dem = write_raster(tmp_path / "dem.tif", np.full((40, 40), 3000.0, np.float32),
                       crs=LOCAL_GRID)
    with pytest.raises(SlidemapError) as caught:
        api.predict(path, tmp_path / "out", dem, tiny_model, OPTIONS)
    assert str(caught.value) == (
        f"image {path} is in a local (engineering) CRS with no datum, which cannot be placed "
        "on the Earth (the inventory's longitudes, the STAC footprint): assign its real CRS "
        "(e.g. gdal_edit.py -a_srs EPSG:32647) or warp it onto one"
        if image_crs == LOCAL_GRID else
        f"DEM {dem} is in site grid, which cannot be reprojected to image {path}'s CRS "
        "WGS 84 / UTM zone 47N (EPSG:32647): warp it onto the image's CRS, or assign it its "
        "real CRS (e.g. gdal_edit.py -a_srs EPSG:32647)")
    assert not (tmp_path / "out").exists()


def test_an_image_georeferenced_by_gcps_only_is_told_to_warp(tmp_path) -> None:
    path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(row, col, 469200.0 + col / 2, 3446200.0 - row / 2)
            for row, col in ((0, 0), (0, 40), (40, 40), (40, 0))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=3,
                           dtype="uint8") as ds:
            ds.gcps = (gcps, CRS.from_epsg(32647))
            ds.write(np.ones((3, 40, 40), np.uint8))
    with pytest.raises(SlidemapError) as caught:
        Scene(path)
    assert str(caught.value) == (
        f"image {path} is georeferenced by ground control points only: warp it onto a grid "
        "first (e.g. gdalwarp -t_srs EPSG:32647 -r bilinear in.tif out.tif)")


def test_the_threshold_of_a_patch_probability_reads_without_rasterio_warnings(tmp_path) -> None:
    """A patch's probability TIFF has no georeference: evaluate --prediction printed rasterio's
    NotGeoreferencedWarning, a raw Python warning with its source line, to read its tags."""
    path = tmp_path / "image_1_prob.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1,
                           dtype="float32") as ds:
            ds.write(np.zeros((16, 16), np.float32), 1)
            ds.update_tags(**provenance([], 0.3, {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recorded_threshold(path) == pytest.approx(0.3)


@pytest.mark.parametrize(("program", "recorded"), [
    ("/venv/bin/slidemap", "slidemap"),
    ("/src/slidemap/__main__.py", "python -m slidemap"),  # python -m slidemap, torchrun -m
])
def test_the_command_recorded_is_one_a_shell_reruns(monkeypatch, program, recorded) -> None:
    monkeypatch.setattr("sys.argv", [program, "predict", "a b.tif", "--out", "out"])
    assert command_line() == f"{recorded} predict 'a b.tif' --out out"


def test_a_prediction_is_scored_at_the_exact_threshold_its_mask_was_drawn_at(tmp_path) -> None:
    """The provenance tag held the threshold to 6 digits (1/3 as 0.333333): evaluate
    --prediction then called landslide the pixels between 0.333333 and 1/3 that the mask
    beside the probability had drawn as background."""
    prob = np.full((8, 8), 0.3333332, np.float32)  # below 1/3, above 0.333333
    path = write_raster(tmp_path / "scene_prob.tif", prob, nodata=float("nan"))
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(**provenance([], 1 / 3, {}))
    assert recorded_threshold(path) == 1 / 3
    truth = write_raster(tmp_path / "truth.tif", np.zeros((8, 8), np.uint8), nodata=255)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlidemapWarning)  # no landslide in the truth
        report = api.evaluate(truth, prediction=path)
    mask = prob >= report.threshold
    assert report.threshold == 1 / 3 and not mask.any()
    assert (report.metrics["fp"], report.metrics["tn"]) == (0, 64)


def test_nodata_over_an_alpha_band_reads_without_rasterio_warnings(tmp_path) -> None:
    image = np.full((4, 64, 64), 80, np.uint8)
    image[:, :, :8] = 0
    path = write_raster(tmp_path / "rgbn.tif", image, nodata=0, photometric="RGB", alpha="YES")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Scene(path) as scene:
            sample = scene.read(Window(0, 0, 64, 64), (1, 2, 3, 4))
            assert scene.any_valid(Window(0, 0, 8, 8)) is False
            assert scene.image_sample((1, 2, 3)).shape[0] == 3
            scene.optical_stats((1, 2, 3))
            scene.read_validity(Window(0, 0, 64, 64))
        mask = write_raster(tmp_path / "rgbn_mask.tif", np.zeros((64, 64), np.uint8),
                            nodata=255)
        picture = imagery(str(path), map_grid(mask))
    assert not sample["valid"][:, :8].any() and sample["valid"][:, 8:].all()
    assert np.isnan(picture[:, :, :8]).all()


def test_suggest_and_bench_take_a_gdal_name_as_written(tiny_scene, tiny_model, tmp_path,
                                                       run_cli) -> None:
    """They took IMAGE and --dem as paths, which fold the '//' of /vsizip//abs/path.zip (and
    of https://, HDF5:"f"://sub) into '/': a name predict reads was 'does not exist' there."""
    with zipfile.ZipFile(tmp_path / "delivery.zip", "w") as bundle:
        bundle.write(tiny_scene["image"], "ortho.tif")
        bundle.write(tiny_scene["dem"], "dsm.tif")
    image, dem = (f"/vsizip/{tmp_path}/delivery.zip/{name}"  # /vsizip//tmp/...
                  for name in ("ortho.tif", "dsm.tif"))
    code, err = run_cli("suggest", tiny_model, image, "--dem", dem, "--n", "1", "--box", "48",
                        "--out", tmp_path / "boxes.gpkg")
    assert code == 0, err
    assert "boxes to label next in ortho.tif" in err
    code, err = run_cli("bench", image, "--dem", dem, "--model", tiny_model, "--tile", "48",
                        "--overlap", "16", "--sample", "1", "--json", tmp_path / "bench.json")
    assert code == 0, err
    assert json.loads((tmp_path / "bench.json").read_text())["size"] == [96, 96]


def test_a_run_config_trains_on_gdal_names_as_written(tiny_scene, tmp_path, run_cli) -> None:
    """The run-config schema took every raster as a Path, which folds the '//' of
    /vsizip//abs/d.zip/o.tif into '/': train refused the image as 'does not exist'. Image, DEM
    and label raster now stay the text written, and the model's provenance records it so; a
    missing local file is still refused in one line."""
    with zipfile.ZipFile(tmp_path / "delivery.zip", "w") as bundle:
        for role in ("image", "dem", "mask"):
            bundle.write(tiny_scene[role], f"{role}.tif")
    scene = {role: f"/vsizip/{tmp_path}/delivery.zip/{role}.tif"  # /vsizip//tmp/...
             for role in ("image", "dem", "mask")}
    sections = {"inputs": {"image_bands": [1, 2, 3], "dem": True}, "training": TINY_TRAINING}
    config = write_config(tmp_path / "run.yaml", run_config([scene], **sections))
    code, err = run_cli("train", config, "--out", tmp_path / "run")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "run" / "model.json").read_text())
    assert sidecar["provenance"]["config"]["train"] == [{**scene, "aoi": None}]
    absent = tmp_path / "absent.tif"
    config = write_config(tmp_path / "absent.yaml",
                          run_config([{**scene, "image": absent}], **sections))
    code, err = run_cli("train", config, "--out", tmp_path / "run2")
    assert (code, err.strip()) == (1, f"error: image {absent} does not exist: check the path")
