"""Rasters that would be scored, trained on or predicted as nonsense without a word: truths with
values that are not labels, probabilities that are not probabilities, complex bands, imagery on
another scale than the model's."""

from __future__ import annotations

import resource
import struct
from pathlib import Path

import numpy as np
import pytest
from factories import (
    RGB_SLOPE,
    declared_vrt,
    run_config,
    tiny_run,
    write_config,
    write_raster,
)

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.data.dataset import load_scene_arrays
from slidemap.errors import SlidemapError


def labels(kind: str) -> np.ndarray:
    base = np.zeros((96, 96), dtype=np.int32)
    base[30:70, 40:80] = 1
    if kind == "uint16 256":  # a uint8 cast would make it 0 (background)
        base[0, 20] = 256
        return base.astype(np.uint16)
    if kind == "int16 -1":  # a uint8 cast would make it 255 (ignored)
        base[0, 20] = -1
        return base.astype(np.int16)
    if kind == "float":
        return base.astype(np.float32)
    if kind == "uint16 ok":
        base[:, :8] = 255
        return base.astype(np.uint16)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["uint16 256", "int16 -1", "float"])
def test_evaluate_refuses_truths_that_are_not_labels(tmp_path: Path, tiny_scene: dict[str, Path],
                                                     run_cli, kind: str) -> None:
    truth = write_raster(tmp_path / "truth.tif", labels(kind))
    prob = write_raster(tmp_path / "prob.tif", np.full((96, 96), 0.3, dtype=np.float32))
    code, err = run_cli("evaluate", truth, "--prediction", prob)
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and str(truth) in err
    assert ("256" in err) if kind == "uint16 256" else True
    assert ("-1" in err) if kind == "int16 -1" else True


def test_evaluate_scores_a_wider_integer_truth_of_valid_labels(
        tmp_path: Path, run_cli) -> None:
    truth = write_raster(tmp_path / "truth.tif", labels("uint16 ok"))
    prob = write_raster(tmp_path / "prob.tif", (labels("uint16 ok") == 1).astype(np.float32))
    code, err = run_cli("evaluate", truth, "--prediction", prob, "--out", tmp_path / "out")
    assert code == 0, err


@pytest.mark.parametrize("kind", ["uint16 256", "int16 -1", "float"])
def test_training_refuses_truths_that_are_not_labels(tmp_path: Path,
                                                     tiny_scene: dict[str, Path],
                                                     kind: str) -> None:
    truth = write_raster(tmp_path / "truth.tif", labels(kind))
    with pytest.raises(SlidemapError, match="label raster") as caught:
        load_scene_arrays(tiny_scene["image"], truth, None, InputSpec())
    assert str(truth) in str(caught.value)


@pytest.mark.parametrize("kind", ["percent", "rgb", "negative"])
def test_evaluate_refuses_predictions_that_are_not_probabilities(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli, kind: str) -> None:
    if kind == "percent":
        array = np.full((96, 96), 40.0, dtype=np.float32)
    elif kind == "rgb":
        array = np.zeros((3, 96, 96), dtype=np.uint8)
    else:
        array = np.full((96, 96), -0.5, dtype=np.float32)
    prediction = write_raster(tmp_path / "pred.tif", array)
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", prediction)
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and str(prediction) in err


def test_complex_image_bands_are_refused(tmp_path: Path, tiny_scene: dict[str, Path],
                                         tiny_model: Path, run_cli) -> None:
    image = write_raster(tmp_path / "complex.tif",
                         (np.ones((3, 96, 96)) * (1 + 2j)).astype(np.complex64))
    code, err = run_cli("predict", image, "--dem", tiny_scene["dem"], "--model", tiny_model,
                        "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err and "complex" in err, err
    assert len(err.strip().splitlines()) == 1 and str(image) in err


def test_int16_imagery_with_negative_values_warns_and_still_maps(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    """Surface reflectance as int16 (offsets make dark pixels negative) normalised with the
    model's 8-bit statistics would map nothing: the user is told, the map is still written."""
    rng = np.random.default_rng(0)
    image = write_raster(tmp_path / "reflectance.tif",
                         rng.integers(-500, 3000, size=(3, 96, 96)).astype(np.int16))
    out = tmp_path / "out"
    code, err = run_cli("predict", image, "--dem", tiny_scene["dem"], "--model", tiny_model,
                        "--out", out, "--precision", "fp32")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(image) in warning[0] and "--normalise scene" in warning[0]
    assert "down to -" in warning[0]
    assert (out / "reflectance_prob.tif").exists()


def test_imagery_on_the_models_scale_gives_no_warning(tmp_path: Path,
                                                      tiny_scene: dict[str, Path],
                                                      tiny_model: Path, run_cli) -> None:
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--out", tmp_path / "out", "--precision", "fp32")
    assert code == 0 and "warning" not in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "1,1", "9", "a,b"])
def test_bad_scales_are_named_in_the_error(tmp_path: Path, tiny_scene: dict[str, Path],
                                           tiny_model: Path, run_cli, value: str) -> None:
    code, err = run_cli("predict", tiny_scene["image"], "--model", tiny_model, "--out",
                        tmp_path / "out", "--scales", value)
    assert code == 2 and f"'{value}'" in err, err


def test_a_raster_whose_crs_text_is_not_utf8_is_one_line(tmp_path: Path, tiny_model: Path,
                                                         run_cli) -> None:
    """Found by tests/io/test_fuzz.py: a GeoTIFF whose model type says geocentric and whose CRS
    citation is not UTF-8 makes rasterio.open raise UnicodeDecodeError."""
    clean = write_raster(tmp_path / "clean.tif", np.ones((3, 64, 64), dtype=np.uint8))
    data = bytearray(clean.read_bytes())
    model_type = data.index(struct.pack("<4H", 1024, 0, 1, 1))  # GTModelTypeGeoKey: projected
    data[model_type + 6] = 3  # geocentric: GDAL names the CRS from the citation
    data[data.index(b"WGS 84")] = 0x80
    image = tmp_path / "damaged.tif"
    image.write_bytes(bytes(data))
    code, err = run_cli("predict", image, "--model", tiny_model, "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err and str(image) in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_a_scene_too_large_to_hold_whole_is_refused_before_it_is_read(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli, command: str) -> None:
    """Training holds its scenes whole: a mosaic of 1 000 000² px (a VRT of a kilobyte) failed
    out of memory after gigabytes were allocated, with a hint at --memory-mb, which training
    has not; it is refused on one line that says how to make it fit."""
    scene = {name: declared_vrt(path, tmp_path / f"{name}.vrt", 1_000_000)
             for name, path in tiny_scene.items()}
    config = write_config(tmp_path / "huge.yaml", run_config([scene], **{
        k: v for k, v in tiny_run(scene).items() if k in ("inputs", "training")}))
    code, err = run_cli(command, config, "--out", tmp_path / "run")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "1,000,000 × 1,000,000 px" in err and "gdal_translate -srcwin" in err
    assert not (tmp_path / "run").exists()


def test_a_scene_beyond_the_address_space_limit_is_refused_before_it_is_read(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``ulimit -v`` (a batch job's limit) the whole read was checked against the
    machine's memory alone: a 9 GB scene passed under a 6 GB limit and ran out of memory after
    5 GB were allocated. A 1000² px VRT (150 MB read whole) under a 100 MB limit is refused."""
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (
        (100 * 2**20, resource.RLIM_INFINITY) if kind == resource.RLIMIT_AS else real(kind)))
    scene = {name: declared_vrt(path, tmp_path / f"{name}.vrt", 1000)
             for name, path in tiny_scene.items()}
    config = write_config(tmp_path / "large.yaml", run_config([scene], **{
        k: v for k, v in tiny_run(scene).items() if k in ("inputs", "training")}))
    code, err = run_cli("train", config, "--out", tmp_path / "run")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "1,000 × 1,000 px" in err and "this process may use" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["predict", "train"])
def test_a_dem_with_no_data_under_the_image_is_named(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, command: str) -> None:
    """An all-nodata DEM left no valid pixel, and the error blamed the image's nodata value:
    the one line names the DEM."""
    dem = write_raster(tmp_path / "void.tif", np.full((96, 96), np.nan, dtype=np.float32),
                       nodata=float("nan"))
    with pytest.raises(SlidemapError, match=f"DEM {dem} has no data under image"):
        if command == "predict":
            api.predict(tiny_scene["image"], tmp_path / "out", dem, tiny_model)
        else:
            load_scene_arrays(tiny_scene["image"], tiny_scene["mask"], dem, RGB_SLOPE)


def test_a_16_bit_alpha_that_holds_255_is_named(tmp_path: Path, tiny_scene: dict[str, Path],
                                                tiny_model: Path) -> None:
    """A uint16 elevation + alpha DEM whose alpha holds 255 for opaque reads as nodata (GDAL
    counts only 65535 as opaque in a uint16 alpha), and the error sent the user to a nodata
    value the DEM does not have: the one line names the alpha and how to read it."""
    elevation = np.full((96, 96), 3000, dtype=np.uint16)
    dem = write_raster(tmp_path / "alpha.tif", np.stack([elevation, np.full_like(elevation, 255)]),
                       alpha="YES")
    with pytest.raises(SlidemapError, match=r"alpha band \(uint16\) holds at most 255") as info:
        api.predict(tiny_scene["image"], tmp_path / "out", dem, tiny_model)
    assert "SRC_ALPHA_MAX=255" in str(info.value) and "\n" not in str(info.value)
