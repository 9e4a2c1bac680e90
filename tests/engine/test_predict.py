"""Scene prediction: georeference and nodata preserved, inventory written, evaluation."""

import json
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import rasterio
from factories import mirrored_scene, read_prob

from slidemap import api
from slidemap.infer.distributed import BandJob, predict_band
from slidemap.infer.predict import PredictOptions
from slidemap.infer.stream import Grid


def test_predict_keeps_georeference_and_nodata(tiny_scene, tiny_model, tmp_path) -> None:
    out = tmp_path / "out"
    result = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model,
                         PredictOptions(tile=48, overlap=16, batch_size=3))
    with rasterio.open(tiny_scene["image"]) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    with rasterio.open(result.prob) as prob_ds, rasterio.open(result.mask) as mask_ds:
        for ds in (prob_ds, mask_ds):
            assert ds.crs == crs and ds.transform == transform and ds.shape == shape
            assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert prob_ds.scales == (pytest.approx(1 / 254),)  # probability steps of 1/254
        mask = mask_ds.read(1)
    prob = read_prob(result.prob)
    assert np.isnan(prob[:, :8]).all() and (mask[:, :8] == 255).all()
    assert np.isfinite(prob[:, 8:]).all() and set(np.unique(mask[:, 8:])) <= {0, 1}
    clear = np.abs(prob[:, 8:] - 0.5) > 0.5 / 254  # the mask is drawn before the rounding
    np.testing.assert_array_equal(mask[:, 8:][clear], (prob[:, 8:] >= 0.5)[clear])
    info = pyogrio.read_info(result.inventory)
    assert info["crs"].endswith("32647")
    assert {"area_m2", "mean_prob"} <= set(info["fields"])


@pytest.mark.parametrize("nodata", [None, -9999.0])
def test_nan_pixels_of_a_float_image_are_no_data(tiny_scene, tiny_model, tmp_path, nodata
                                                 ) -> None:
    # A float image with a NaN hole and no NaN nodata value: GDAL's mask lets NaN through,
    # which was read as the band mean and mapped as ground (mask 0 or 1, a probability).
    with rasterio.open(tiny_scene["image"]) as src:
        image, profile = src.read().astype(np.float32), src.profile
    image[:, :, :8] = -9999.0 if nodata is not None else np.nan
    image[1, 40:60, 30:50] = np.nan  # one band is enough
    profile.update(dtype="float32", nodata=nodata)
    with rasterio.open(tmp_path / "float.tif", "w", **profile) as ds:
        ds.write(image)
    result = api.predict(tmp_path / "float.tif", tmp_path / "out", tiny_scene["dem"],
                         tiny_model, PredictOptions(tile=48, overlap=16))
    with rasterio.open(result.mask) as ds:
        mask = ds.read(1)
    assert (mask[40:60, 30:50] == 255).all() and (mask[:, :8] == 255).all()
    assert result.valid_pixels == int((mask != 255).sum()) == 96 * 88 - 20 * 20
    assert np.isnan(read_prob(result.prob)[40:60, 30:50]).all()


def test_predict_is_the_same_for_any_batch_size(tiny_scene, tiny_model, tmp_path) -> None:
    maps = []
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        result = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model,
                             PredictOptions(tile=48, overlap=16, batch_size=batch,
                                            precision="fp32"))
        with rasterio.open(result.prob) as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("flips", [(True, False), (False, True), (True, True)])
def test_a_grid_stored_south_up_or_east_to_west_is_mapped_as_north_up(
        tiny_scene, tiny_model, tmp_path, flips) -> None:
    """The same ground stored south up (transform.e > 0) and/or east to west (a < 0) gets the
    north-up map: the network sees every window north up and the windows lie on the same
    ground (laid from the north-west corner). Windows were fed as stored, upside down, and
    laid from the stored top: the maps differed wherever the network is not symmetric."""
    mirrored = mirrored_scene(tiny_scene, tmp_path / "mirrored", flips)
    options = PredictOptions(tile=40, overlap=8, precision="fp32")  # windows at 0, 32, 56
    maps = []
    for name, scene in (("north", tiny_scene), ("mirrored", mirrored)):
        result = api.predict(scene["image"], tmp_path / f"map_{name}", scene["dem"], tiny_model,
                             options, prob_dtype="float32")
        with rasterio.open(result.mask) as ds:
            mask = ds.read(1)
        maps.append((read_prob(result.prob), mask))
    (north, north_mask), (mirror, mirror_mask) = maps
    axes = tuple(axis for axis, flip in enumerate(flips) if flip)
    np.testing.assert_allclose(np.flip(mirror, axes), north, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.flip(mirror_mask, axes), north_mask)


def test_a_dask_band_of_a_south_up_scene_is_the_north_up_one(tiny_scene, tiny_model,
                                                               tmp_path) -> None:
    """A Dask worker feeds the network a south-up scene's windows north up too, and its
    northernmost band holds the north-up scene's first windows."""
    south = mirrored_scene(tiny_scene, tmp_path / "south", (True, False))
    bands = []
    for scene, flips in ((tiny_scene, (False, False)), (south, (True, False))):
        grid = Grid.of(96, 96, 40, 8, 1, flips=flips)
        job = BandJob(str(scene["image"]), str(scene["dem"]), (str(tiny_model),), False, "fp32",
                      "torch", False, (1.0,), 4, None, grid)
        bands.append(predict_band(job, (0, grid.rows[-1] if flips[0] else 0)))
    north, south_up = bands
    assert [w.row_off for w in north.windows] == [0, 0, 0]
    assert [w.row_off for w in south_up.windows] == [56, 56, 56]
    for north_prob, south_prob in zip(north.probs, south_up.probs, strict=True):
        np.testing.assert_allclose(south_prob[::-1], north_prob, atol=1e-6)


def test_evaluate_cli_writes_metrics(tiny_scene, tiny_model, tmp_path) -> None:
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "slidemap", "evaluate", str(tiny_scene["mask"]),
         "--image", str(tiny_scene["image"]), "--dem", str(tiny_scene["dem"]),
         "--model", str(tiny_model), "--out", str(out)],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "metrics.json").read_text())
    metrics = report["metrics"]
    assert metrics["pixels"] == 96 * 88
    # The figures are those of the model's own map against the labels, counted here apart.
    mapped = api.predict(tiny_scene["image"], tmp_path / "map", dem=tiny_scene["dem"],
                         model=tiny_model)
    with rasterio.open(mapped.mask) as src_map, rasterio.open(tiny_scene["mask"]) as src_truth:
        hit, truth = src_map.read(1), src_truth.read(1)
    keep = (hit != 255) & (truth != 255)
    tp = int(((hit == 1) & (truth == 1) & keep).sum())
    fp = int(((hit == 1) & (truth == 0) & keep).sum())
    fn = int(((hit == 0) & (truth == 1) & keep).sum())
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (tp, fp, fn)
    assert metrics["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert 0.0 <= metrics["auc"] <= 1.0
    # Scoring the truth against itself is perfect.
    perfect = api.evaluate(tiny_scene["mask"], prediction=tiny_scene["mask"]).metrics
    assert perfect["f1"] == 1.0 and perfect["miou"] == 1.0
