"""The shipped model on Jinsha region A, which it never trained on (skips without shared data)."""

import json

import pytest
import rasterio
from conftest import SHARED_DATA

from slidemap import api

JINSHA = SHARED_DATA / "jinsha"


@pytest.mark.skipif(not JINSHA.exists(), reason="../shared/data/jinsha is not here")
def test_shipped_model_maps_unseen_region_a(tmp_path) -> None:
    image, dem = JINSHA / "region_A_image.tif", JINSHA / "region_A_dsm.tif"
    sidecar = json.loads(api.default_model_path().with_suffix(".json").read_text())
    trained_on = [scene["image"] for scene in sidecar["provenance"]["config"]["train"]]
    assert not any("region_A" in path for path in trained_on)

    result = api.predict(image, tmp_path, dem)
    with rasterio.open(image) as src:
        grid = (src.crs, src.transform, src.shape)
    for key in ("prob", "mask"):
        with rasterio.open(result[key]) as out:
            assert (out.crs, out.transform, out.shape) == grid
    assert result["landslides"] > 0

    metrics = api.evaluate(JINSHA / "region_A_mask.tif", prediction=result["prob"])["metrics"]
    assert metrics["f1"] >= 0.75
