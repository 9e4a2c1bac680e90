"""The shipped models on the Jinsha scenes they were trained on (skips without shared data).

Both regions trained them, so these are not held-out figures (the protocol's out-of-fold figures
are in models/README.md); the test checks that each shipped file is the model its card describes,
maps a scene onto the input grid and still fits its own training ground.
"""

import json

import pytest
import rasterio
from factories import SHARED_DATA

from slidemap import api
from slidemap.schema.config import load_config

JINSHA = SHARED_DATA / "jinsha"
FAST_MODEL = api.DEFAULT_MODEL.with_name("slidemap-jinsha-unet.safetensors")  # elevation


TERRAIN = ["band1", "band2", "band3", "relief8m", "relief32m", "relief128m", "slope", "curvature",
           "roughness"]


def test_the_default_model_is_the_terrain_unet_in_a_small_file() -> None:
    """The protocol's choice (models/README.md): one U-Net on RGB and terrain descriptors, no
    absolute elevation, the threshold its out-of-fold evidence supports."""
    sidecar = json.loads(api.default_model_path().with_suffix(".json").read_text())
    assert (sidecar["architecture"], sidecar["members"], sidecar["weights_dtype"]) == (
        "unet", 1, "int8")
    assert sidecar["channels"] == TERRAIN and not sidecar["inputs"]["dem"]
    assert sidecar["threshold"] == 0.5
    assert "protocol" in sidecar["card"]["new_ground"]
    assert api.default_model_path().stat().st_size < 4 * 2**20  # shipped weights stay small


def test_every_shipped_model_says_what_to_expect_on_new_ground() -> None:
    """The report prints card.new_ground under every map; a shipped file without it left the
    RGB-only default's maps saying 'unmeasured' beside its leave-one-site-out figures."""
    for sidecar_path in sorted(api.DEFAULT_MODEL.parent.glob("*.json")):
        card = json.loads(sidecar_path.read_text()).get("card", {})
        assert len(card.get("new_ground", "")) > 100, sidecar_path.name


@pytest.mark.slow  # maps a whole real Jinsha scene
@pytest.mark.skipif(not JINSHA.exists(), reason="../shared/data/jinsha is not here")
@pytest.mark.parametrize("model", [api.DEFAULT_MODEL, FAST_MODEL], ids=["default", "fast"])
def test_shipped_model_maps_a_jinsha_scene(model, tmp_path) -> None:
    image, dem = JINSHA / "region_A_image.tif", JINSHA / "region_A_dsm.tif"
    sidecar = json.loads(model.with_suffix(".json").read_text())
    trained_on = sorted(scene["image"] for scene in sidecar["provenance"]["config"]["train"])
    assert [path.rsplit("/", 1)[-1] for path in trained_on] == ["region_A_image.tif",
                                                                "region_B_image.tif"]

    result = api.predict(image, tmp_path, dem, model=model)
    with rasterio.open(image) as src:
        grid = (src.crs, src.transform, src.shape)
    for key in ("prob", "mask"):
        with rasterio.open(result.files[key]) as out:
            assert (out.crs, out.transform, out.shape) == grid
    assert result.landslides > 0

    metrics = api.evaluate(JINSHA / "region_A_mask.tif", prediction=result.prob).metrics
    assert metrics["f1"] >= 0.85


ROOT = api.PACKAGE_ROOT
RUN_CONFIGS = [*sorted((ROOT / "configs").glob("*.yaml")),
               ROOT / "benchmarks" / "cross_region" / "base.yaml"]  # its recipes: test_schema


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[p.name for p in RUN_CONFIGS])
def test_shipped_run_configs_load(path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # their data paths are relative to the repository root
    config = load_config(path)
    if "relief" in path.stem:
        assert config.inputs.channels == ["band1", "band2", "band3", "relief", "slope"]
        assert config.inputs.relief_m == 250.0
