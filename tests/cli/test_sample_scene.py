"""The sample scene in examples/: the README's first command maps it on any clone (no
../shared beside it), with the shipped model."""

from __future__ import annotations

import re
import shlex

import numpy as np
import rasterio

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
