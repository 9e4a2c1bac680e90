"""What ``predict`` says of a patch set: no figures of nothing, a warning where the labels hold no
landslide, and one where the patches lie outside the values the model was trained on; and where
its outputs lie on the map."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from slidemap.data.channels import InputSpec
from slidemap.data.sources import (
    MAX_PATCH_HELD,
    check_patches_held,
    load_patch_arrays,
    open_patch_set,
    patch_held_bytes,
)
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.io.modelfile import ModelBundle, PredictDefaults, load_model, save_model
from slidemap.models import build_model
from slidemap.schema.config import PatchSource
from slidemap.workflows.patches import predict_patch_set

OPTIONS = PredictOptions(tile=16, overlap=0, precision="fp32")


def l4s_split(root: Path, mask: np.ndarray, nan_band: int | None = None,
              gain: float = 1.0) -> Path:
    """One Landslide4Sense patch the size of ``mask`` (values about 1, as the release's, times
    ``gain``), ``nan_band`` (0-based) NaN throughout."""
    img = gain * np.random.default_rng(0).normal(1.0, 0.1, (*mask.shape, 14)).astype(np.float32)
    if nan_band is not None:
        img[..., nan_band] = np.nan
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    with h5py.File(root / "img" / "image_1.h5", "w") as f:
        f["img"] = img
    with h5py.File(root / "mask" / "mask_1.h5", "w") as f:
        f["mask"] = mask
    return root


def b4_b8_model(folder: Path, scale: float = 1.0) -> Predictor:
    """A seeded width-4 U-Net reading B4, B8 and slope of Landslide4Sense patches at ``scale``."""
    torch.manual_seed(0)
    bundle = ModelBundle(model=build_model("unet", 3, width=4, depth=2), architecture="unet",
                         width=4, options={"depth": 2},
                         inputs=InputSpec(image_bands=(4, 8), slope=True, scale=scale),
                         mean=[1.0, 1.0, 1.0], std=[0.1, 0.1, 0.1],
                         predict=PredictDefaults(tile=16, overlap=0))
    return Predictor([load_model(save_model(bundle, folder / "l4s"))], precision="fp32")


def test_a_set_with_no_valid_pixel_is_refused_and_leaves_no_output(tmp_path: Path) -> None:
    """B4 NaN in every patch: no pixel is valid, and an F1 of 0 over no pixel was written as
    the set's figures."""
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    root = l4s_split(tmp_path / "split", mask, nan_band=3)
    with pytest.raises(SlidemapError, match="nothing to map"):
        predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS)
    assert not (tmp_path / "out").exists()


def test_a_set_without_landslide_warns_that_its_figures_are_undefined(tmp_path: Path) -> None:
    root = l4s_split(tmp_path / "split", np.zeros((16, 16), np.uint8))
    with pytest.warns(SlidemapWarning, match="no landslide pixel"):
        summary = predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS)
    assert summary["metrics"]["pixels"] == 16 * 16


def test_a_set_with_landslides_is_scored_without_a_warning(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    root = l4s_split(tmp_path / "split", mask, nan_band=0)  # B1: a band the model does not read
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        summary = predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS)
    assert summary["metrics"]["tp"] + summary["metrics"]["fn"] == 16


@pytest.mark.parametrize("gain", [1000.0, 0.001])
def test_patches_on_another_scale_than_the_training_data_warn(tmp_path: Path,
                                                             gain: float) -> None:
    """16-bit counts, or a model of other data: mapped as nothing without a word before."""
    root = l4s_split(tmp_path / "split", np.zeros((16, 16), np.uint8), gain=gain)
    with pytest.warns(SlidemapWarning, match="band 4 .* of the model's training data"):
        predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS)


def test_patches_normalised_with_their_own_statistics_do_not_warn(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    root = l4s_split(tmp_path / "split", mask, gain=1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out",
                          PredictOptions(tile=16, overlap=0, precision="fp32",
                                         normalise="scene"))


@pytest.mark.parametrize("scale", [float("inf"), 1000.0, 0.0])
def test_a_scale_no_model_file_may_hold_is_one_line(tmp_path: Path, scale: float) -> None:
    """--scale inf was an OverflowError traceback; 1000 tried to allocate 393 GB."""
    root = l4s_split(tmp_path / "split", np.zeros((16, 16), np.uint8))
    with pytest.raises(SlidemapError, match="is not above 0 and at most 64"):
        predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS, scale=scale)
    assert not (tmp_path / "out").exists()


def test_a_patch_promoted_past_the_largest_patch_is_refused_before_it_is_allocated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """130 px at scale 64 is 8320 px a side: refused by what it would hold, before anything is
    promoted (it ended as "out of memory: lower --memory-mb", which did not say to lower the
    scale)."""
    root = l4s_split(tmp_path / "split", np.zeros((130, 130), np.uint8))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("promoted before the size was checked")

    monkeypatch.setattr("slidemap.data.sources.promote", never)
    with pytest.raises(SlidemapError, match=r"image_1 \(\S+\) is 130 × 130 px: mapped whole at "
                                            r"scale 64 .*; pass a smaller --scale"):
        predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS, scale=64)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model_scale", "scale"), [(1.0, 1e-300), (1e-300, None), (1.0, 0.4)])
def test_a_scale_that_shrinks_a_patch_below_a_window_is_refused(
        tmp_path: Path, model_scale: float, scale: float | None) -> None:
    """A sidecar's inputs.scale (or --scale) of 1e-300 shrank every patch to one pixel and wrote
    maps of one value, with figures, in silence."""
    root = l4s_split(tmp_path / "split", np.zeros((32, 32), np.uint8))
    with pytest.raises(SlidemapError, match=r"image_1 at scale .* would be (1|13) × \1 px: .*"
                                            "below 16 px a side"):
        predict_patch_set(b4_b8_model(tmp_path, model_scale), root, tmp_path / "out", OPTIONS,
                          scale=scale)
    assert not (tmp_path / "out").exists()
    predict_patch_set(b4_b8_model(tmp_path), root, tmp_path / "out", OPTIONS, scale=0.5)


def rgb_model(folder: Path) -> Predictor:
    """A seeded width-4 U-Net reading bands 1-3 of 8-bit patches."""
    torch.manual_seed(0)
    bundle = ModelBundle(model=build_model("unet", 3, width=4, depth=2), architecture="unet",
                         width=4, options={"depth": 2}, inputs=InputSpec(image_bands=(1, 2, 3)),
                         mean=[100.0] * 3, std=[30.0] * 3,
                         predict=PredictDefaults(tile=16, overlap=0))
    return Predictor([load_model(save_model(bundle, folder / "rgb"))], precision="fp32")


def declared_patch(root: Path, side: int, georeferenced: bool) -> Path:
    """A patch folder of one sparse RGB TIFF declaring ``side``² px: a few kilobytes on disk."""
    (root / "images").mkdir(parents=True)
    grid = {"crs": CRS.from_epsg(32647), "transform": from_origin(500_000, 3_400_000, 0.5, 0.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(root / "images" / "big.tif", "w", driver="GTiff", width=side,
                           height=side, count=3, dtype="uint8", tiled=True, compress="deflate",
                           SPARSE_OK=True, **(grid if georeferenced else {})):
            pass
    return root


@pytest.mark.parametrize(("side", "georeferenced", "advice"), [
    (8192, True, r"5.5 GB at once, .* 2 GB a patch may; cut it into tiles .*, or map it as a "
                 r"scene: slidemap predict \S+big.tif$"),
    (6000, False, r"3.0 GB at once, .* 2 GB a patch may; pass a smaller --scale, or cut it into "
                  r"tiles \(gdal_retile.py -ps 1024 1024 -targetDir DIR \S+big.tif\)$"),
])
def test_a_patch_that_mapping_whole_would_exhaust_memory_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int, georeferenced: bool,
        advice: str) -> None:
    """An 8192² px RGB patch passed the caps on one copy of its values (192 MB) and took 3.8 GB
    at scale 0.5, ran out of memory above 4.7 GB at scale 1 with advice to lower --memory-mb,
    which patches do not use: what mapping it holds at once is counted from its header."""
    root = declared_patch(tmp_path / "set", side, georeferenced)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("read before what it holds was checked")

    monkeypatch.setattr("slidemap.data.patches.read_image", never)
    with pytest.raises(SlidemapError, match=rf"patch big \(\S+big.tif\) is {side:,} × {side:,} "
                                            rf"px: mapped whole at scale 1 with 3 channel\(s\) "
                                            rf"it would hold about {advice}"):
        predict_patch_set(rgb_model(tmp_path), root, tmp_path / "out", OPTIONS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("side", "channels", "scale"), [
    (128, 14, 1.0), (512, 3, 0.5), (1024, 5, 2.0), (4096, 3, 1.0)])
def test_patches_of_the_usual_sizes_are_held(side: int, channels: int, scale: float) -> None:
    """Landslide4Sense, Nepal, Bijie (with DEM and slope, up-sampled) and a 4096² px tile fit."""
    assert patch_held_bytes(side, side, channels, scale) <= MAX_PATCH_HELD


def declared_l4s_patch(root: Path, side: int) -> Path:
    """A Landslide4Sense split of one compressed (``side``, ``side``, 14) float32 ``img`` and its
    mask, declared and never written: a few kilobytes on disk."""
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    with h5py.File(root / "img" / "image_1.h5", "w") as f:
        f.create_dataset("img", (side, side, 14), np.float32, chunks=True, compression="gzip",
                         fillvalue=1.0)
    with h5py.File(root / "mask" / "mask_1.h5", "w") as f:
        f.create_dataset("mask", (side, side), np.uint8, chunks=True, compression="gzip")
    return root


def never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make reading any patch (image file or HDF5 array) fail the test."""
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("read before what it holds was checked")

    monkeypatch.setattr("slidemap.data.patches.read_image", never)
    monkeypatch.setattr("slidemap.data.l4s._read_dataset", never)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_landslide4sense_patch_that_mapping_would_exhaust_memory_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    """A 4096² px Landslide4Sense patch (896 MB of values, within the caps) passed the check
    that patch folders have and, at --scale 2 under a 5 GB limit, ran out of memory after
    minutes: its read holds all 14 bands twice, and what mapping holds is counted from its
    header."""
    root = declared_l4s_patch(tmp_path / "split", 4096)
    predictor = b4_b8_model(tmp_path)
    never_read(monkeypatch)
    with pytest.raises(SlidemapError, match=rf"patch image_1 \(\S+image_1.h5\) is 4,096 × 4,096 "
                                            rf"px: mapped whole at scale {scale:g} with 3 "
                                            r"channel\(s\) it would hold about \d+.\d GB at once, "
                                            r"more than the 2 GB a patch may; cut its img into "
                                            r"patches of a few hundred px"):
        predict_patch_set(predictor, root, tmp_path / "out", OPTIONS, scale=scale)
    assert not (tmp_path / "out").exists()


def test_a_landslide4sense_patch_of_the_usual_size_is_held(tmp_path: Path) -> None:
    """All 14 bands at scale 4 (Landslide4Sense patches are 128 px) fit."""
    spec = InputSpec(image_bands=tuple(range(1, 13)), dem=True, slope=True, scale=4.0)
    check_patches_held(open_patch_set(declared_l4s_patch(tmp_path / "split", 128), spec), spec)


@pytest.mark.parametrize(("kind", "side", "advice"), [
    ("patches", 6000, r"pass a smaller inputs.scale, or cut it into tiles \(gdal_retile.py"),
    ("l4s", 4096, "cut its img into patches"),
])
def test_a_training_patch_that_would_exhaust_memory_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, side: int,
        advice: str) -> None:
    """Training on a patch folder with one 8000² px RGB GeoTIFF at scale 0.5 under a 4 GB limit
    ran out of memory after two minutes with "pass a smaller scene", which a patch is not: its
    patches are checked from their headers, as predict's are."""
    if kind == "patches":
        root = declared_patch(tmp_path / "set", side, georeferenced=False)
        (root / "masks").mkdir()
        shutil.copy(root / "images" / "big.tif", root / "masks" / "big.tif")
        spec = InputSpec(image_bands=(1, 2, 3))
    else:
        root = declared_l4s_patch(tmp_path / "set", side)
        spec = InputSpec(image_bands=(4, 8), slope=True)
    never_read(monkeypatch)
    with pytest.raises(SlidemapError, match=rf"is {side:,} × {side:,} px: trained on whole at "
                                            rf"scale 1 with 3 channel\(s\) .*; {advice}"):
        load_patch_arrays(PatchSource(kind, root), spec)


def test_outputs_of_georeferenced_patches_keep_their_place_on_the_map(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 255, (3, 20, 24), dtype=np.uint8)
    grid = {"crs": CRS.from_epsg(32647), "transform": from_origin(500_000, 3_400_000, 0.5, 0.5)}
    with rasterio.open(root / "images" / "p0.tif", "w", driver="GTiff", width=24, height=20,
                       count=3, dtype="uint8", **grid) as ds:
        ds.write(image)
    Image.fromarray(np.moveaxis(image, 0, -1)).save(root / "images" / "p1.png")
    predict_patch_set(rgb_model(tmp_path), root, tmp_path / "out", OPTIONS)
    for kind in ("prob", "mask"):
        with rasterio.open(tmp_path / "out" / f"p0_{kind}.tif") as ds:
            assert ds.crs == grid["crs"] and ds.transform == grid["transform"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp_path / "out" / f"p1_{kind}.tif") as ds:
                assert ds.crs is None
