"""GIS inputs and outputs: GDAL dataset names, COGs, the mask's legend, provenance, the styled
inventory and STAC Items in and out."""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import sqlite3
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from factories import rewrite_sidecar
from matplotlib import colormaps
from pystac.validation.local_validator import LocalValidator
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from slidemap import api
from slidemap.data.names import dataset_stem, is_local
from slidemap.data.terrain import epsg_code
from slidemap.errors import SlidemapError
from slidemap.infer.predict import PredictOptions
from slidemap.io.rasters import RasterFormat, RasterOutputs, read_probability

OPTIONS = PredictOptions(tile=48, overlap=16, batch_size=4)


@pytest.mark.parametrize(("name", "local", "stem"), [
    ("data/scene.tif", True, "scene"),
    ("/vsizip/data/archive.zip/folder/scene_B.tif", False, "scene_B"),
    ("https://example.org/cogs/ortho.tif?token=1", False, "ortho"),
    ("s3://bucket/path/dsm.tif", False, "dsm"),
    ('HDF5:"patches/image_1.h5"://img', False, "image_1_img"),
    ("NETCDF:scene.nc:elevation", False, "scene_elevation"),
    ("SENTINEL2_L1C:/d/S2A_MSIL1C_2024.SAFE/MTD_MSIL1C.xml:10m:EPSG_32647", False,
     "S2A_MSIL1C_2024_10m_EPSG_32647"),
    ("mosaic.vrt", True, "mosaic"),
])
def test_dataset_names_give_sensible_output_stems(name, local, stem) -> None:
    assert is_local(name) is local
    assert dataset_stem(name) == stem


def _zip_scene(scene: dict[str, Path], tmp_path: Path) -> Path:
    archive = tmp_path / "delivery.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(scene["image"], "tiles/ortho.tif")
        bundle.write(scene["dem"], "tiles/dsm.tif")
    return archive


def test_a_scene_inside_a_zip_maps_like_the_plain_file(tiny_scene, tiny_model, tmp_path) -> None:
    archive = _zip_scene(tiny_scene, tmp_path)
    zipped = api.predict(f"/vsizip/{archive}/tiles/ortho.tif", str(tmp_path / "zip"),
                         f"/vsizip/{archive}/tiles/dsm.tif", str(tiny_model), OPTIONS)
    plain = api.predict(tiny_scene["image"], tmp_path / "plain", tiny_scene["dem"], tiny_model,
                        OPTIONS)
    assert Path(zipped.prob).name == "ortho_prob.tif"
    assert Path(zipped.inventory).name == "ortho_landslides.gpkg"
    with rasterio.open(zipped.prob) as a, rasterio.open(plain.prob) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.tags()["SLIDEMAP_IMAGE"] == f"/vsizip/{archive}/tiles/ortho.tif"


def test_a_missing_remote_name_fails_on_one_line(tiny_model, tmp_path) -> None:
    with pytest.raises(SlidemapError) as caught:
        api.predict(f"/vsizip/{tmp_path}/absent.zip/scene.tif", tmp_path / "out",
                    model=tiny_model, options=OPTIONS)
    message = str(caught.value)
    assert "\n" not in message and "cannot be read as a raster" in message
    assert "/vsizip/" in message


def test_a_zip_passed_whole_names_the_rasters_inside(tiny_scene, tiny_model, tmp_path) -> None:
    """GDAL does not open an archive as a raster: the error asked whether the zip was an
    uncorrupted GeoTIFF instead of naming the /vsizip/ path of the scene inside it."""
    archive = _zip_scene(tiny_scene, tmp_path)
    with pytest.raises(SlidemapError) as caught:
        api.predict(archive, tmp_path / "out", model=tiny_model, options=OPTIONS)
    message = str(caught.value)
    assert "\n" not in message and "GeoTIFF" not in message
    assert f"/vsizip/{archive}/tiles/ortho.tif" in message


@pytest.mark.parametrize("role", ["image", "DEM"])
def test_a_file_of_several_variables_names_its_subdatasets(tiny_scene, tiny_model, tmp_path,
                                                           role: str) -> None:
    """A netCDF or HDF5 file of several variables opens as their container, with no band: it
    was refused as an image without georeference, or a DEM of "0 bands", naming no subdataset."""
    container = tmp_path / "scene.h5"
    with h5py.File(container, "w") as file:
        file["img"] = np.zeros((3, 8, 8), np.uint8)
        file["dem"] = np.zeros((8, 8), np.float32)
    image, dem = (container, tiny_scene["dem"]) if role == "image" else \
        (tiny_scene["image"], container)
    with pytest.raises(SlidemapError) as caught:
        api.predict(image, tmp_path / "out", dem, tiny_model, OPTIONS)
    message = str(caught.value)
    assert message.startswith(f"{role} {container} holds 2 subdatasets")
    assert f'{container}://img' in message and "\n" not in message


THRESHOLD = 0.5


def _write_outputs(tmp_path: Path, prob_dtype: str) -> tuple[Path, Path, Path, np.ndarray]:
    """A 700×600 probability ramp written strip by strip as the engine writes it."""
    profile = {"crs": rasterio.crs.CRS.from_epsg(32647),
               "transform": rasterio.transform.from_origin(469200.0, 3446200.0, 0.5, 0.5),
               "width": 700, "height": 600}
    prob = np.tile(np.linspace(0.0, 1.0, 700, dtype=np.float32), (600, 1))
    valid = np.ones(prob.shape, dtype=bool)
    valid[:, :10] = False
    paths = (tmp_path / f"{prob_dtype}_prob.tif", tmp_path / f"{prob_dtype}_mask.tif",
             tmp_path / f"{prob_dtype}_mask.tif.aux.xml")
    fmt = RasterFormat(prob_dtype, {"SLIDEMAP_THRESHOLD": str(THRESHOLD)}, paths[2])
    with RasterOutputs(profile, paths[0], paths[1], fmt) as outputs:
        for top in range(0, 600, 256):
            rows = slice(top, top + 256)
            window = Window(0, top, 700, prob[rows].shape[0])
            outputs.write(window, prob[rows], valid[rows], THRESHOLD)
    return *paths, np.where(valid, prob, np.nan)


def test_outputs_are_cogs_with_overviews_legend_and_tags(tmp_path) -> None:
    prob_path, mask_path, aux, _ = _write_outputs(tmp_path, "float32")
    for path in (prob_path, mask_path):
        valid, errors, warnings = cog_validate(str(path), strict=True)
        assert valid and not errors and not warnings, (path, errors, warnings)
        with rasterio.open(path) as ds:
            assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
            assert ds.tags()["SLIDEMAP_THRESHOLD"] == "0.5" and ds.descriptions[0]
    with rasterio.open(mask_path) as ds:
        assert ds.colormap(1)[1][:3] == (230, 60, 30) and ds.colormap(1)[0][:3] == (255,) * 3
        assert ds.tags(1)["CLASS_1"] == "landslide"
    names = [e.text for e in ET.parse(aux).getroot().iter("Category")]
    assert names == ["background", "landslide"]
    assert not list(tmp_path.glob(".*")), "scratch or temporary files were left behind"


def _libgdal() -> ctypes.CDLL | None:
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*.so*"))
    return ctypes.CDLL(libs[0]) if libs else None


def test_gdal_itself_reads_the_mask_categories_and_attribute_table(tmp_path) -> None:
    """Through GDAL's C API (as QGIS reads it), not our own XML parser."""
    gdal = _libgdal()
    if gdal is None:
        pytest.skip("rasterio's bundled libgdal is not at rasterio.libs (a system GDAL build)")
    _, mask_path, _, _ = _write_outputs(tmp_path, "float32")
    gdal.GDALAllRegister()
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALGetRasterBand.restype = ctypes.c_void_p
    gdal.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gdal.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    gdal.GDALGetDefaultRAT.restype = ctypes.c_void_p
    gdal.GDALGetDefaultRAT.argtypes = [ctypes.c_void_p]
    gdal.GDALRATGetRowCount.argtypes = [ctypes.c_void_p]
    gdal.GDALRATGetValueAsString.restype = ctypes.c_char_p
    gdal.GDALRATGetValueAsString.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    ds = gdal.GDALOpen(str(mask_path).encode(), 0)
    try:
        band = gdal.GDALGetRasterBand(ds, 1)
        # GeoTIFF loads the .aux.xml lazily, on the first metadata request (gdalinfo and QGIS
        # make one on opening); category names alone do not trigger it
        gdal.GDALGetMetadata.restype = ctypes.c_void_p
        gdal.GDALGetMetadata.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        gdal.GDALGetMetadata(band, None)
        names = gdal.GDALGetRasterCategoryNames(band)
        assert [names[0], names[1]] == [b"background", b"landslide"]
        rat = gdal.GDALGetDefaultRAT(band)
        assert rat and gdal.GDALRATGetRowCount(rat) == 2
        assert gdal.GDALRATGetValueAsString(rat, 1, 1) == b"landslide"
        assert gdal.GDALRATGetValueAsString(rat, 0, 5) == b"0"  # background: see-through
    finally:
        gdal.GDALClose(ds)


def test_uint8_probability_scales_back_and_is_smaller(tmp_path) -> None:
    small, _, _, truth = _write_outputs(tmp_path, "uint8")
    large, _, _, _ = _write_outputs(tmp_path, "float32")
    with rasterio.open(small) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        scale, offset = ds.scales[0], ds.offsets[0]
        values = ds.read(1, masked=True).astype(np.float32) * scale + offset
    back = np.ma.filled(values, np.nan)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(truth))
    near = np.abs(truth - THRESHOLD) < 1 / 254  # may take one step to stay on its side
    assert np.nanmax(np.abs(back - truth)[~near]) <= 0.5 / 254 + 1e-6
    assert np.nanmax(np.abs(back - truth)[near]) <= 1 / 254 + 1e-6
    assert small.stat().st_size < large.stat().st_size / 3


def test_uint8_probability_thresholded_gives_the_mask(tmp_path) -> None:
    """0.499 would round to 127/254 = 0.5: the step is kept below the threshold instead."""
    prob_path, mask_path, _, truth = _write_outputs(tmp_path, "uint8")
    with rasterio.open(prob_path) as ds:
        back = ds.read(1, masked=True).astype(np.float32) * ds.scales[0] + ds.offsets[0]
    with rasterio.open(mask_path) as ds:
        mask = ds.read(1, masked=True)
    below = truth[truth < THRESHOLD]
    assert (np.rint(below * 254) / 254 >= THRESHOLD).any()  # values that rounding would flip
    np.testing.assert_array_equal((back >= THRESHOLD).filled(False), (mask == 1).filled(False))


@pytest.mark.parametrize("step", [9, 72, 104, 143, 239])
def test_uint8_probability_at_a_threshold_on_a_step_gives_the_mask(tmp_path, step) -> None:
    """A threshold on a step (9/254): the side was decided on 9/254 in float64, but the file
    reads back as 9 × (1/254) in float32, a hair below it, so a pixel at the threshold was
    landslide in the mask and background in the probability read back (evaluate's count)."""
    threshold = step / 254
    prob = np.full((4, 4), threshold, np.float32)
    profile = {"crs": rasterio.crs.CRS.from_epsg(32647), "width": 4, "height": 4,
               "transform": rasterio.transform.from_origin(469200.0, 3446200.0, 0.5, 0.5)}
    mask = tmp_path / "mask.tif"
    with RasterOutputs(profile, tmp_path / "prob.tif", mask) as outputs:
        outputs.write(Window(0, 0, 4, 4), prob, np.ones((4, 4), bool), threshold)
    with rasterio.open(tmp_path / "prob.tif") as ds:
        back = read_probability(ds, Window(0, 0, 4, 4))
    with rasterio.open(mask) as ds:
        assert (ds.read(1) == 1).all()
    assert (back >= threshold).all()


def test_predict_outputs_carry_provenance_style_and_centroids(tiny_scene, tiny_model,
                                                              tmp_path) -> None:
    result = api.predict(str(tiny_scene["image"]), tmp_path / "out", str(tiny_scene["dem"]),
                         tiny_model, OPTIONS, min_area_m2=0.0, prob_dtype="uint8")
    digest = hashlib.sha256(Path(tiny_model).read_bytes()).hexdigest()
    for key in ("prob", "mask"):
        with rasterio.open(result.files[key]) as ds:
            tags = ds.tags()
        assert tags["SLIDEMAP_MODEL_SHA256"] == digest
        assert tags["SLIDEMAP_IMAGE"] == str(tiny_scene["image"])
        assert tags["SLIDEMAP_DEM"] == str(tiny_scene["dem"])
        assert {"SLIDEMAP_VERSION", "SLIDEMAP_THRESHOLD", "SLIDEMAP_COMMAND"} <= set(tags)
    info = pyogrio.read_info(result.inventory, layer="landslides")
    assert info["layer_metadata"]["SLIDEMAP_MODEL_SHA256"] == digest
    assert "id" not in info["fields"]
    assert {"centroid_lon", "centroid_lat"} <= set(info["fields"])
    _, _, _, values = pyogrio.raw.read(result.inventory, layer="landslides", read_geometry=False)
    fields = dict(zip(info["fields"], values, strict=True))
    if len(fields["centroid_lon"]):  # the tiny scene lies near 98.7° E, 31.1° N
        assert np.allclose(fields["centroid_lon"], 98.68, atol=0.02)
        assert np.allclose(fields["centroid_lat"], 31.14, atol=0.02)
    with sqlite3.connect(result.inventory) as db:
        rows = db.execute("SELECT f_table_name, f_geometry_column, styleQML, useAsDefault "
                          "FROM layer_styles").fetchall()
        registered = db.execute("SELECT data_type FROM gpkg_contents WHERE table_name = "
                                "'layer_styles'").fetchone()
    assert len(rows) == 1 and rows[0][0] == "landslides" and rows[0][3] == 1
    assert rows[0][1] == "geom"  # pyogrio's GeoPackage geometry column
    assert registered == ("attributes",)
    qml = ET.parse(result.style).getroot()
    assert qml.tag == "qgis" and qml.find("renderer-v2") is not None
    assert ET.fromstring(rows[0][2]).tag == "qgis"


def test_the_rasters_carry_qgis_styles_that_leave_the_background_see_through(
        tiny_scene, tiny_model, tmp_path) -> None:
    """A GeoTIFF colour table has no alpha (GDAL reads every entry back opaque), so QGIS drew
    the mask's background opaque white over the imagery: ``<raster>.qml`` beside each raster,
    QGIS's default style, holds the mask's colours with their alpha and the report's
    probability ramp over 0-1 (the uint8 band's values after its scale of 1/254)."""
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         OPTIONS)
    inventory_style = ET.parse(result.style).getroot()
    with rasterio.open(result.mask) as ds:
        table = ds.colormap(1)
    assert table[0][3] == 255  # why the style is needed: the file's palette is opaque
    mask_style = result.files["mask_style"]
    assert mask_style == result.mask.with_suffix(".qml")  # the name QGIS looks for
    root = ET.parse(mask_style).getroot()
    assert root.tag == "qgis" and root.get("version") == inventory_style.get("version")
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = {int(e.get("value")): e for e in renderer.iterfind("colorPalette/paletteEntry")}
    assert entries[0].get("alpha") == "0" and entries[255].get("alpha") == "0"
    assert entries[1].get("alpha") == "255" and entries[1].get("label") == "landslide"
    for value in (0, 1):
        assert entries[value].get("color") == "#{:02x}{:02x}{:02x}".format(*table[value][:3])

    prob_style = result.files["prob_style"]
    assert prob_style == result.prob.with_suffix(".qml")
    renderer = ET.parse(prob_style).getroot().find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    assert (renderer.get("classificationMin"), renderer.get("classificationMax")) == ("0", "1")
    items = renderer.findall("rastershader/colorrampshader/item")
    values = np.array([float(i.get("value")) for i in items])
    bar = np.round(colormaps["magma"](values)[:, :3] * 255).astype(int)  # the report's bar
    assert values[0] == 0 and values[-1] == 1
    assert [i.get("color") for i in items] == ["#{:02x}{:02x}{:02x}".format(*c) for c in bar]
    with rasterio.open(result.prob) as ds:  # QGIS ramps the scaled values: 254 steps is 1
        assert ds.scales[0] * 254 == pytest.approx(1.0) and ds.offsets[0] == 0

    assets = json.loads(Path(result.stac).read_text())["assets"]
    for key, path in (("mask_style", mask_style), ("prob_style", prob_style)):
        assert assets[key]["href"] == f"./{path.name}" and assets[key]["roles"] == ["metadata"]
        assert assets[key]["file:checksum"] == "1220" + hashlib.sha256(
            path.read_bytes()).hexdigest()


def test_outputs_record_the_settings_the_map_depends_on(tiny_scene, tiny_model,
                                                        tmp_path) -> None:
    """Made through the API (no command line shows them), the windows, scales, TTA and
    normalisation were recorded nowhere: a rerun with the defaults made another map."""
    options = replace(OPTIONS, tta=True, normalise="scene", scales=(1.0, 0.5),
                      precision="fp32")
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         options, html_report=True)
    expected = ("tile=48 overlap=16 scales=1,0.5 tta=yes normalise=scene precision=fp32 "
                "backend=torch")
    for key in ("prob", "mask"):
        with rasterio.open(result.files[key]) as ds:
            assert ds.tags()["SLIDEMAP_OPTIONS"] == expected
    info = pyogrio.read_info(result.inventory, layer="landslides")
    assert info["layer_metadata"]["SLIDEMAP_OPTIONS"] == expected
    item = json.loads(Path(result.stac).read_text())
    assert item["properties"]["slidemap:options"] == expected
    assert expected in Path(result.report).read_text()


def test_the_inventory_records_the_sizes_it_was_cut_at(tiny_scene, tiny_model,
                                                       tmp_path) -> None:
    """--min-area and --simplify change the inventory, and their defaults follow the model's
    working pixel: the GeoPackage and the STAC Item said neither."""
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         OPTIONS, min_area_m2=5.0, simplify_m=0.0)
    expected = "min_area_m2=5 simplify_m=0"
    info = pyogrio.read_info(result.inventory, layer="landslides")
    assert info["layer_metadata"]["SLIDEMAP_INVENTORY"] == expected
    item = json.loads(Path(result.stac).read_text())
    assert item["properties"]["slidemap:inventory"] == expected


@pytest.mark.parametrize("suffix", [".json", ""])
def test_a_model_named_by_its_sidecar_or_stem_records_its_weights(tiny_scene, tiny_model,
                                                                  tmp_path, suffix) -> None:
    """The loader takes NAME.json and NAME as well as NAME.safetensors; the provenance hashed
    the name as given, so NAME.json recorded the sidecar's SHA-256 as the model's, and NAME
    (what ``export --out SMALL`` writes as SMALL.safetensors) failed on a file that is none."""
    named = tiny_model.with_suffix(suffix)
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], named,
                         OPTIONS)
    with rasterio.open(result.prob) as ds:
        tags = ds.tags()
    assert tags["SLIDEMAP_MODEL"] == str(tiny_model)
    assert tags["SLIDEMAP_MODEL_SHA256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()


def test_a_model_given_relatively_is_recorded_so_a_report_elsewhere_reads_its_card(
        tiny_scene, tiny_model, tmp_path, monkeypatch) -> None:
    """``--model models/x.safetensors`` was recorded as written while the image and DEM were
    made absolute, so ``slidemap report`` run from another folder found no sidecar and said the
    model had no card, and the STAC Item named a file that is not there from its folder."""
    rewrite_sidecar(tiny_model, card={"new_ground": "F1 0.5 on the far valley."})
    monkeypatch.chdir(tiny_model.parent.parent)
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"],
                         Path("models") / tiny_model.name, OPTIONS)
    with rasterio.open(result.prob) as ds:
        assert ds.tags()["SLIDEMAP_MODEL"] == str(tiny_model.resolve())
    item = json.loads(Path(result.stac).read_text())
    assert item["properties"]["slidemap:model"] == str(tiny_model.resolve())
    monkeypatch.chdir(tmp_path / "out")
    html = api.report(tmp_path / "out").html.read_text()
    assert "F1 0.5 on the far valley." in html and "unmeasured" not in html


def test_min_area_and_simplify_default_to_the_working_resolution(tiny_scene, tiny_model,
                                                                 tmp_path) -> None:
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         OPTIONS)
    assert result.working_pixel_m == 0.5  # the tiny model reads native 0.5 m pixels
    assert result.min_area_m2 == 4 * 0.25 and result.simplify_m == 0.25
    _, _, _, values = pyogrio.raw.read(result.inventory, layer="landslides", read_geometry=False)
    info = pyogrio.read_info(result.inventory, layer="landslides")
    areas = dict(zip(info["fields"], values, strict=True))["area_m2"]
    assert (areas >= 1.0).all()


def _core_validator():
    return LocalValidator().item_validator("1.1.0")


def test_predict_writes_a_stac_item_that_validates_and_reads_back(tiny_scene, tiny_model,
                                                                  tmp_path) -> None:
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         OPTIONS)
    data = json.loads(Path(result.stac).read_text())
    _core_validator().validate(data)  # the core Item schema bundled with pystac: offline
    extensions = " ".join(data["stac_extensions"])
    for name in ("projection", "raster", "file", "classification"):
        assert f"stac-extensions.github.io/{name}/" in extensions
    assert data["properties"]["proj:code"] == "EPSG:32647"
    assert data["properties"]["proj:shape"] == [96, 96]
    lon, lat = np.array(data["geometry"]["coordinates"][0]).mean(axis=0)
    assert abs(lon - 98.68) < 0.05 and abs(lat - 31.14) < 0.05
    assets = data["assets"]
    for key in ("prob", "mask", "inventory"):
        path = Path(result.files[key])
        assert assets[key]["href"] == f"./{path.name}"
        assert assets[key]["file:size"] == path.stat().st_size
        assert assets[key]["file:checksum"] == "1220" + hashlib.sha256(
            path.read_bytes()).hexdigest()
    band = assets["prob"]["raster:bands"][0]  # the default: uint8 steps of 1/254
    assert band["data_type"] == "uint8" and band["nodata"] == 255
    assert band["scale"] == pytest.approx(1 / 254)
    classes = {c["value"]: c["name"] for c in assets["mask"]["classification:classes"]}
    assert classes == {0: "background", 1: "landslide", 255: "nodata"}
    with rasterio.open(result.mask) as ds:  # the legend is the colour table the file draws
        drawn = {v: "{:02X}{:02X}{:02X}".format(*ds.colormap(1)[v][:3]) for v in (0, 1)}
    assert {c["value"]: c.get("color_hint") for c in assets["mask"]["classification:classes"]
            if c["value"] in drawn} == drawn
    item = pystac.Item.from_file(result.stac)  # reads back, and as the input of predict:
    again = api.predict(result.stac, tmp_path / "again", model=tiny_model, options=OPTIONS)
    assert item.assets["image"].roles == ["source"]
    with rasterio.open(result.prob) as a, rasterio.open(again.prob) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


# A transverse Mercator on an unnamed datum of the WGS 84 ellipsoid: no EPSG CRS, though
# rasterio's to_epsg() takes the first of three equal loose matches, EPSG:23867 (DGN95).
UNNAMED_DATUM_TM = ("+proj=tmerc +lat_0=0 +lon_0=99 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 "
                    "+units=m +no_defs")


def test_a_crs_that_is_no_epsg_crs_is_recorded_by_its_wkt_not_a_loose_code(
        tiny_scene, tiny_model, tmp_path) -> None:
    for key in ("image", "dem"):
        with rasterio.open(tiny_scene[key], "r+") as ds:
            ds.crs = rasterio.crs.CRS.from_proj4(UNNAMED_DATUM_TM)
    result = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                         OPTIONS)
    properties = json.loads(Path(result.stac).read_text())["properties"]
    with rasterio.open(result.prob) as ds:
        assert "proj:code" not in properties
        assert rasterio.crs.CRS.from_wkt(properties["proj:wkt2"]) == ds.crs
    assert epsg_code(rasterio.crs.CRS.from_epsg(32647)) == 32647


def _scene_item(scene: dict[str, Path], when: str | None, **times: str) -> Path:
    """An Item of the tiny scene, its image and DSM as relative assets, beside them; ``when``
    its datetime, ``times`` its start_datetime and end_datetime."""
    item = pystac.Item("scene", {"type": "Point", "coordinates": [98.68, 31.14]},
                       [98.68, 31.14, 98.68, 31.14],
                       None if when is None else pystac.utils.str_to_datetime(when), {},
                       **{key: pystac.utils.str_to_datetime(value)
                          for key, value in times.items()})
    item.add_asset("visual", pystac.Asset("./scene.tif", media_type=pystac.MediaType.GEOTIFF,
                                          roles=["visual"]))
    item.add_asset("elevation", pystac.Asset("./scene_dsm.tif", roles=["dem"],
                                             media_type=pystac.MediaType.GEOTIFF))
    path = scene["image"].with_name("item.json")
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def test_a_stac_item_with_relative_assets_is_an_input(tiny_scene, tiny_model, tmp_path) -> None:
    path = _scene_item(tiny_scene, "2024-05-01T04:00:00Z")
    result = api.predict(path, tmp_path / "out", model=tiny_model, options=OPTIONS)
    with rasterio.open(result.prob) as ds:
        assert ds.tags()["SLIDEMAP_DEM"].endswith("scene_dsm.tif")
    out_item = json.loads(Path(result.stac).read_text())
    assert out_item["properties"]["datetime"].startswith("2024-05-01T04:00:00")
    assert any(link["rel"] == "derived_from" for link in out_item["links"])


def test_a_stac_item_of_a_time_range_gives_its_range_to_the_map(tiny_scene, tiny_model,
                                                                  tmp_path) -> None:
    """A source Item with datetime null and a start and end (a mosaic of several passes) gave
    the map the time of mapping instead of the imagery's range."""
    path = _scene_item(tiny_scene, None, start_datetime="2024-05-01T00:00:00Z",
                       end_datetime="2024-05-09T00:00:00Z")
    result = api.predict(path, tmp_path / "out", model=tiny_model, options=OPTIONS)
    out_item = json.loads(Path(result.stac).read_text())
    properties = out_item["properties"]
    assert properties["datetime"] is None
    assert properties["start_datetime"].startswith("2024-05-01T00:00:00")
    assert properties["end_datetime"].startswith("2024-05-09T00:00:00")
    _core_validator().validate(out_item)  # the core Item schema bundled with pystac: offline


def test_a_stac_item_without_an_image_asset_fails_on_one_line(tiny_model, tmp_path) -> None:
    path = tmp_path / "item.json"
    item = pystac.Item("x", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"),
                       {})
    item.add_asset("thumbnail", pystac.Asset("./x.png", media_type=pystac.MediaType.PNG))
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    with pytest.raises(SlidemapError, match="has no image asset"):
        api.predict(path, tmp_path / "out", model=tiny_model, options=OPTIONS)


def test_an_hdf5_subdataset_reads_as_a_scene(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    with rasterio.Env() as env:
        if "HDF5" not in env.drivers():
            pytest.skip("this GDAL has no HDF5 driver")
    image = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    path = tmp_path / "patch_7.h5"
    with h5py.File(path, "w") as f:
        f["img"] = image
        f["mask"] = np.zeros((40, 50), np.uint8)
    name = f'HDF5:"{path}"://img'
    assert dataset_stem(name) == "patch_7_img"
    from slidemap.data.scene import Scene

    with Scene(name, require_crs=False) as scene:
        assert (scene.band_count, scene.height, scene.width) == (3, 40, 50)
        sample = scene.read(Window(10, 5, 20, 30), (1, 2, 3))
    np.testing.assert_array_equal(sample["image"], image[:, 5:35, 10:30])


def test_a_vrt_of_the_scene_maps_like_the_scene(tiny_scene, tiny_model, tmp_path) -> None:
    with rasterio.open(tiny_scene["image"]) as src:
        width, height, transform, crs = src.width, src.height, src.transform, src.crs.to_wkt()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{tiny_scene["image"]}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>'
                   f"{crs.replace('&', '&amp;').replace('<', '&lt;')}</SRS><GeoTransform>"
                   f"{', '.join(str(v) for v in transform.to_gdal())}</GeoTransform>{bands}"
                   "</VRTDataset>")
    through = api.predict(vrt, tmp_path / "vrt", tiny_scene["dem"], tiny_model, OPTIONS)
    plain = api.predict(tiny_scene["image"], tmp_path / "plain", tiny_scene["dem"], tiny_model,
                        OPTIONS)
    assert Path(through.prob).name == "mosaic_prob.tif"
    with rasterio.open(through.prob) as a, rasterio.open(plain.prob) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_evaluate_scores_a_prediction_at_the_threshold_its_mask_was_drawn_at(
        tiny_scene, tiny_model, tmp_path) -> None:
    """The probability raster records its threshold: scoring it at 0.5 instead would score
    another map than the mask predict wrote beside it."""
    options = replace(OPTIONS, threshold=0.3)
    mapped = api.predict(tiny_scene["image"], tmp_path / "map", tiny_scene["dem"], tiny_model,
                         options)
    assert api.evaluate(tiny_scene["mask"], prediction=mapped.prob).threshold == 0.3
    assert api.evaluate(tiny_scene["mask"], prediction=mapped.prob,
                        threshold=0.6).threshold == 0.6
