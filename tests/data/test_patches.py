"""Patch folders (images/ + masks/ + dem/) and the Bijie layout, on fixtures written here."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from factories import SHARED_DATA
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from slidemap.data.channels import InputSpec
from slidemap.data.patches import (
    BijieFolder,
    PatchFolder,
    open_patch_dataset,
    read_image,
    read_mask,
)
from slidemap.data.sources import open_patch_set
from slidemap.errors import SlidemapError, SlidemapWarning

RNG = np.random.default_rng(0)


def png(path: Path, array: np.ndarray) -> Path:
    """Save with pillow; the suffix picks the format (PNG, JPEG, TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def tiff(path: Path, array: np.ndarray, nodata: float | None = None,
         res: float | None = None) -> Path:
    """Write (C, H, W) ``array``; with ``res`` it gets a UTM georeference of that pixel size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "count": array.shape[0], "height": array.shape[1],
               "width": array.shape[2], "dtype": array.dtype.name, "nodata": nodata}
    if res is not None:
        profile |= {"crs": CRS.from_epsg(32647), "transform": Affine(res, 0, 5e5, 0, -res, 3.4e6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def rgb(h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(h: int = 8, w: int = 8) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[2:5, 3:6] = 1
    return mask


def test_pairs_by_stem_and_reads_both_mask_conventions(tmp_path: Path) -> None:
    image = rgb()
    png(tmp_path / "images" / "a.jpg", image)
    png(tmp_path / "images" / "b.png", image)
    png(tmp_path / "masks" / "a.png", labels() * 255)
    png(tmp_path / "masks" / "b.png", labels())
    (tmp_path / "images" / "notes.txt").write_text("ignored")

    ds = PatchFolder(tmp_path)

    assert ds.names == ["a", "b"]
    assert ds.labelled
    for i in range(2):
        sample = ds[i]
        assert sample["image"].shape == (3, 8, 8)
        assert sample["image"].dtype == np.float32
        assert sample["mask"].dtype == np.uint8
        np.testing.assert_array_equal(sample["mask"], labels())
        assert sample["valid"].all()
    np.testing.assert_array_equal(ds[1]["image"], np.moveaxis(image, -1, 0).astype(np.float32))


def test_bad_mask_values_name_the_file(tmp_path: Path) -> None:
    png(tmp_path / "images" / "x.png", rgb())
    bad = labels() * 7
    png(tmp_path / "masks" / "x.png", bad)
    with pytest.raises(SlidemapError, match=r"masks/x.png has values \{0, 7\}: masks must be"):
        PatchFolder(tmp_path)[0]


def test_mixed_one_and_255_is_an_error(tmp_path: Path) -> None:
    mask = labels()
    mask[0, 0] = 255
    with pytest.raises(SlidemapError, match=r"\{0, 1, 255\}"):
        read_mask(png(tmp_path / "m.png", mask))


def test_rgba_drops_alpha_and_transparent_is_ignored(tmp_path: Path) -> None:
    rgba = np.concatenate([rgb(), np.full((8, 8, 1), 255, np.uint8)], axis=-1)
    rgba[0, 0, 3] = 0
    png(tmp_path / "images" / "a.png", rgba)
    png(tmp_path / "masks" / "a.png", labels())
    sample = PatchFolder(tmp_path)[0]
    assert sample["image"].shape == (3, 8, 8)
    assert not sample["valid"][0, 0] and sample["valid"].sum() == 63
    assert sample["mask"][0, 0] == 255


def test_greyscale_is_one_band_and_bands_are_selected_1_based(tmp_path: Path) -> None:
    png(tmp_path / "grey" / "images" / "g.png", rgb()[..., 0])
    assert PatchFolder(tmp_path / "grey")[0]["image"].shape == (1, 8, 8)

    image = rgb()
    png(tmp_path / "rgb" / "images" / "c.png", image)
    picked = PatchFolder(tmp_path / "rgb", bands=[3, 1])[0]["image"]
    np.testing.assert_array_equal(picked[0], image[..., 2])
    np.testing.assert_array_equal(picked[1], image[..., 0])
    with pytest.raises(SlidemapError, match="has 3 band"):
        PatchFolder(tmp_path / "rgb", bands=[4])[0]


def test_unlabelled_folder_has_no_mask(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", rgb())
    ds = PatchFolder(tmp_path)
    assert not ds.labelled
    assert "mask" not in ds[0]


def test_tiff_keeps_16_bit_values_and_nodata_becomes_ignore(tmp_path: Path) -> None:
    image = RNG.integers(1, 60000, (4, 8, 8)).astype(np.uint16)
    image[:, 1, 1] = 0
    tiff(tmp_path / "images" / "s.tif", image, nodata=0)
    png(tmp_path / "masks" / "s.png", labels())
    sample = PatchFolder(tmp_path)[0]
    np.testing.assert_array_equal(sample["image"], image.astype(np.float32))
    assert not sample["valid"][1, 1]
    assert sample["mask"][1, 1] == 255
    assert sample["mask"][2, 3] == 1


def test_dem_gives_slope_and_nan_is_ignored(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", rgb())
    png(tmp_path / "masks" / "a.png", labels())
    cols = np.arange(8, dtype=np.float32)
    dem = np.broadcast_to(cols * 2.0, (8, 8)).copy()  # rises 2 m per 2 m pixel: 45°
    dem[6, 6] = np.nan
    tiff(tmp_path / "dem" / "a.tif", dem[None], res=2.0)

    ds = PatchFolder(tmp_path)
    sample = ds[0]
    assert ds.has_dem and ds.has_slope
    assert sample["dem"].shape == (1, 8, 8) and sample["slope"].shape == (1, 8, 8)
    np.testing.assert_allclose(sample["slope"][0, 2, 2], 45.0, atol=1e-4)
    assert sample["mask"][6, 6] == 255 and np.isnan(sample["slope"][0, 6, 6])  # NaN: ignored
    assert sample["mask"][5, 5] == 0 and np.isfinite(sample["slope"][0, 5, 5])  # its neighbour
    assert sample["mask"][2, 3] == 1


def test_a_patch_dem_in_decimetres_is_read_in_metres(tmp_path: Path) -> None:
    """An int16 DEM storing decimetres with GDAL scale 0.1 (as a scene's DEM is read): read raw,
    its slope was 84° where the ground rises at 45°."""
    png(tmp_path / "images" / "a.png", rgb())
    png(tmp_path / "masks" / "a.png", labels())
    decimetres = np.broadcast_to(np.arange(8, dtype=np.int16) * 20, (8, 8)).copy()
    tiff(tmp_path / "dem" / "a.tif", decimetres[None], res=2.0)
    with rasterio.open(tmp_path / "dem" / "a.tif", "r+") as ds:
        ds.scales = (0.1,)
    sample = PatchFolder(tmp_path)[0]
    np.testing.assert_allclose(sample["dem"][0, 0, :3], [0.0, 2.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(sample["slope"][0, 2, 2], 45.0, atol=1e-4)


def test_dem_without_georeference_needs_a_pixel_size_for_slope(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", rgb())
    png(tmp_path / "dem" / "a.png", np.tile(np.arange(8, dtype=np.uint8), (8, 1)))
    assert "slope" not in PatchFolder(tmp_path)[0]
    slope = PatchFolder(tmp_path, pixel_size=1.0)[0]["slope"]
    np.testing.assert_allclose(slope[0, 3, 3], 45.0, atol=1e-4)


@pytest.mark.parametrize(("suffix", "dtype", "unit", "warned"), [
    (".png", np.uint8, "", True), (".tif", np.uint8, "", True), (".tif", np.uint8, "m", False),
    (".png", np.uint16, "", False), (".tif", np.float32, "", False)])
def test_a_set_of_8_bit_dems_warns_once(tmp_path: Path, suffix: str, dtype: type, unit: str,
                                        warned: bool) -> None:
    """8-bit PNG DEMs (as Bijie's) were read as whole metres without a word, though they may
    hold grey levels stretched per patch; a set of them warns once, whatever its size. 16-bit
    and float DEMs, and an 8-bit GeoTIFF that declares its unit, are read quietly."""
    for stem in ("a", "b", "c"):
        png(tmp_path / "images" / f"{stem}.png", rgb())
        dem = tmp_path / "dem" / f"{stem}{suffix}"
        values = np.tile(np.arange(8, dtype=dtype) * 3, (8, 1))
        if suffix == ".png":
            png(dem, values)
        else:
            tiff(dem, values[None])
        if unit:
            with rasterio.open(dem, "r+") as ds:
                ds.units = (unit,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_patch_set(tmp_path, InputSpec(image_bands=(1, 2, 3), dem=True), pixel_size=1.0)
        open_patch_set(tmp_path, InputSpec(image_bands=(1, 2, 3)))  # reads no DEM: quiet
    messages = [str(w.message) for w in caught if issubclass(w.category, SlidemapWarning)]
    assert len(messages) == warned, messages
    assert all("8-bit" in m and "\n" not in m for m in messages)


def test_coarser_dem_is_resampled_to_the_image_grid(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", rgb(8, 8))
    tiff(tmp_path / "dem" / "a.tif", np.full((1, 4, 4), 100.0, np.float32))
    dem = PatchFolder(tmp_path)[0]["dem"]
    assert dem.shape == (1, 8, 8)
    np.testing.assert_allclose(dem, 100.0)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: (r / "images").mkdir(parents=True), r"images/ is empty"),
        (lambda r: png(r / "images" / "a.png", rgb()) and (r / "masks").mkdir(),
         r"image .*a.png has no mask .*masks/a"),
        (lambda r: png(r / "images" / "a.png", rgb()) and png(r / "images" / "a.tif", rgb()),
         r"has both a.png and a.tif"),
    ],
)
def test_layout_errors_are_one_line(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(SlidemapError, match=message) as info:
        PatchFolder(tmp_path)
    assert "\n" not in str(info.value)


def test_mask_of_another_size_is_an_error(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png", rgb(8, 8))
    png(tmp_path / "masks" / "a.png", labels(6, 8))
    with pytest.raises(SlidemapError, match="is 6×8 but image"):
        PatchFolder(tmp_path)[0]


def write_bijie(root: Path) -> None:
    for group, stems in (("landslide", ["df001", "df002"]), ("non-landslide", ["df001"])):
        for stem in stems:
            png(root / group / "image" / f"{stem}.png", rgb())
            png(root / group / "dem" / f"{stem}.png", np.full((8, 8), 90, np.uint8))
            if group == "landslide":
                png(root / group / "mask" / f"{stem}.png", labels() * 255)


def test_bijie_layout(tmp_path: Path) -> None:
    write_bijie(tmp_path)
    ds = BijieFolder(tmp_path)
    assert ds.names == ["landslide_df001", "landslide_df002", "non-landslide_df001"]
    assert ds.labelled and ds.has_dem
    np.testing.assert_array_equal(ds[0]["mask"], labels())
    quiet = ds[2]
    assert quiet["mask"].dtype == np.uint8 and not quiet["mask"].any()
    assert quiet["dem"].shape == (1, 8, 8) and quiet["dem"].dtype == np.float32


def test_open_patch_dataset_detects_the_layout(tmp_path: Path) -> None:
    write_bijie(tmp_path / "bijie")
    png(tmp_path / "plain" / "images" / "a.png", rgb())
    (tmp_path / "other").mkdir()
    assert isinstance(open_patch_dataset(tmp_path / "bijie"), BijieFolder)
    assert isinstance(open_patch_dataset(tmp_path / "plain"), PatchFolder)
    with pytest.raises(SlidemapError, match="is not a patch folder"):
        open_patch_dataset(tmp_path / "other")
    with pytest.raises(SlidemapError, match="is not a folder"):
        open_patch_dataset(tmp_path / "missing")


@pytest.mark.slow  # reads the real ../shared/data
def test_shared_nepal_patches() -> None:
    root = SHARED_DATA / "nepal"
    if not root.is_dir():
        pytest.skip(f"shared data absent: {root} (a fresh clone has no ../shared/data)")
    ds = open_patch_dataset(root)
    assert isinstance(ds, PatchFolder) and len(ds) == 36 and ds.labelled
    sample = ds[0]
    assert sample["image"].shape == (3, 512, 512)
    assert set(np.unique(sample["mask"])) <= {0, 1}
    fraction = np.mean([ds[i]["mask"].mean() for i in range(0, 36, 6)])
    assert 0 < fraction < 0.05  # landslides are tiny: about 0.7 % of pixels


def test_a_tiff_patch_declaring_a_scene_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A sparse TIFF of a kilobyte may declare 100 000² px: read whole as a patch, it ran out of
    memory after allocating; its size is checked first."""
    (tmp_path / "images").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "images" / "p1.tif", "w", driver="GTiff", width=100_000,
                           height=100_000, count=3, dtype="uint8", tiled=True,
                           compress="deflate", SPARSE_OK=True):
            pass
    with pytest.raises(SlidemapError, match=r"p1.tif is 100,000 × 100,000 px .* at most 8192"):
        PatchFolder(tmp_path)[0]


@pytest.mark.parametrize("side", [9000, 30_000])
def test_a_png_patch_declaring_a_scene_is_refused_before_it_is_decoded(tmp_path: Path,
                                                                       side: int) -> None:
    """A PNG's header alone gives its size: 30 000² px was Pillow's DecompressionBombError as
    a traceback, 9000² px (below Pillow's limit) was decoded whole."""
    (tmp_path / "images").mkdir()
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    (tmp_path / "images" / "p1.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b""))
    with pytest.raises(SlidemapError, match=r"p1.png is .*at most 8192 px a side"):
        PatchFolder(tmp_path)[0]


@pytest.mark.parametrize(("dtype", "colours"), [
    ("float32", ("red", "green", "blue", "alpha")),  # gdalwarp -dstalpha of a float patch
    ("uint8", ("red", "green", "blue", "undefined", "alpha")),  # RGB + NIR, then alpha
])
def test_an_alpha_band_gdals_mask_leaves_out_marks_a_patch_nodata(tmp_path, dtype, colours
                                                                  ) -> None:
    """A patch TIFF's transparent pixels are nodata even where GDAL's own mask ignores its
    alpha band (a float one, or one after a fourth band), as a scene's are: they were read as
    valid ground and mapped."""
    bands = len(colours)
    data = np.full((bands, 16, 16), 100, dtype=dtype)
    data[-1] = 255
    data[-1, :, :4] = 0
    path = tmp_path / "patch.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=bands,
                           dtype=dtype) as ds:
            ds.write(data)
            ds.colorinterp = [ColorInterp[c] for c in colours]
    image, valid = read_image(path)
    assert image.shape == (bands - 1, 16, 16)
    assert not valid[:, :4].any() and valid[:, 4:].all()
