"""The sample scene in examples/: the README's first command maps it on any clone (no
../shared beside it), with the shipped model."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from factories import write_raster
from PIL import Image

from slidemap import api

ROOT = api.PACKAGE_ROOT
SAMPLE = ROOT / "examples" / "jinsha-b"


def readme_first_command() -> list[str]:
    """The slidemap part of the first line of the README's first shell block."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.+)\n", text)
    assert first, "the README starts with a bash block"
    command = first[1].split("&&")[-1].strip()
    return shlex.split(command)


def test_the_sample_scene_ships_small_with_its_source() -> None:
    files = sorted(SAMPLE.glob("*.tif"))
    assert [f.name for f in files] == ["jinsha_b_dsm.tif", "jinsha_b_image.tif",
                                       "jinsha_b_mask.tif"]
    assert sum(f.stat().st_size for f in files) < 4 * 2**20
    notes = (SAMPLE / "README.md").read_text()
    assert "virylon/AMU-Net" in notes and "Wei" in notes
    with rasterio.open(files[1]) as image, rasterio.open(files[0]) as dsm:
        assert image.crs == dsm.crs and image.transform == dsm.transform


def test_the_readmes_first_command_maps_the_sample(run_cli, tmp_path) -> None:
    args = readme_first_command()
    assert args[:2] == [".venv/bin/slidemap", "predict"]
    assert all(not a.startswith("../shared") for a in args), "it must work without ../shared"
    out = args.index("--out")
    args[out + 1] = str(tmp_path / "sample")
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in args[1:]]
    code, err = run_cli(*args)
    assert code == 0, err
    count = re.search(r"(\d+) landslides?, ", err)  # "1 landslide", not "1 landslides"
    assert count and count.group(0).endswith("s, ") == (count.group(1) != "1"), err
    stem = tmp_path / "sample" / "jinsha_b_image"
    for suffix in ("_prob.tif", "_mask.tif", "_landslides.gpkg", "_item.json"):
        assert stem.with_name(stem.name + suffix).exists()
    metrics = api.evaluate(SAMPLE / "jinsha_b_mask.tif",
                           prediction=stem.with_name(stem.name + "_prob.tif")).metrics
    assert metrics["f1"] >= 0.7  # ground the shipped model was trained on: a sanity bar


def test_the_default_models_map_does_not_move_with_the_dem_datum(tmp_path) -> None:
    """The default reads the terrain's form, not its altitude: the same DSM 30 m higher (another
    vertical datum or DEM source) gives the same map. A default that reads absolute elevation
    again fails here (issue #26: on new ground such a shift cost the elevation U-Net much of
    its F1)."""
    image, dsm = SAMPLE / "jinsha_b_image.tif", SAMPLE / "jinsha_b_dsm.tif"
    raised = tmp_path / "raised_dsm.tif"
    with rasterio.open(dsm) as src:
        profile, heights = src.profile, src.read(1)
    with rasterio.open(raised, "w", **profile) as dst:
        dst.write(heights + 30.0, 1)
    probs = []
    for name, dem in (("as_given", dsm), ("raised", raised)):
        result = api.predict(image, tmp_path / name, dem)
        with rasterio.open(result.prob) as src:
            probs.append(src.read(1))
    valid = np.isfinite(probs[0])
    assert valid.mean() > 0.9 and (probs[0][valid] > 0.5).any()
    assert np.array_equal(valid, np.isfinite(probs[1]))
    assert np.abs(probs[0][valid] - probs[1][valid]).max() < 1e-3


def test_a_patch_set_with_elevation_maps_with_a_shipped_model_that_reads_patches(
        tmp_path: Path) -> None:
    """The default reads terrain descriptors, which need georeferenced scenes: a patch set with
    ``dem/`` and no ``--model`` gets the shipped U-Net on RGB + DEM + slope instead."""
    with rasterio.open(SAMPLE / "jinsha_b_image.tif") as ds:
        rgb = ds.read(window=rasterio.windows.Window(300, 300, 128, 128))
    with rasterio.open(SAMPLE / "jinsha_b_dsm.tif") as ds:
        dsm = ds.read(window=rasterio.windows.Window(300, 300, 128, 128)).astype(np.float32)
    for sub in ("images", "dem"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    Image.fromarray(np.moveaxis(rgb, 0, -1)).save(tmp_path / "set" / "images" / "p0.png")
    write_raster(tmp_path / "set" / "dem" / "p0.tif", dsm)
    result = api.predict_patches(str(tmp_path / "set"), str(tmp_path / "out"))
    assert [p.name for p in result.model] == ["slidemap-jinsha-unet.safetensors"]
    assert (tmp_path / "out" / "p0_prob.tif").exists()


def test_explain_without_a_dem_picks_the_rgb_model_as_predict_does(tmp_path: Path,
                                                                   run_cli) -> None:
    code, err = run_cli("explain", SAMPLE / "jinsha_b_image.tif", "--out", tmp_path / "x",
                        "--window", "256,256,256,256")
    assert code == 0, err
    assert (tmp_path / "x" / "explain.json").exists()
