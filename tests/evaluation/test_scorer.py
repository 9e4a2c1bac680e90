"""The one scorer: training validation, finetune before/after and study report the same figures
for the same model on the same data, counted on each item's own grid."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import (
    TINY_PREDICT,
    TINY_TRAINING,
    declared_vrt,
    mirrored_scene,
    patch_folder,
    run_config,
    tiny_bundle,
    write_config,
    write_raster,
)
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.data.dataset import load_scene_arrays
from slidemap.data.scene import Scene
from slidemap.data.sources import load_arrays
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation import raster
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.evaluation.raster import score_raster
from slidemap.evaluation.scorer import score_bundle, score_regions
from slidemap.infer.ensemble import Predictor
from slidemap.infer.patches import native_prob
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import load_model, save_model
from slidemap.schema.config import SceneSource, load_config
from slidemap.train.finetune import finetune
from slidemap.train.study import score_run


@pytest.fixture
def mixed_config(tmp_path: Path, tiny_scene: dict[str, Path]) -> Path:
    """A fine-tuning config whose validation holds a scene and a patch set up-sampled 2×, so a
    scorer on the up-sampled grid would count other pixels than one on the native grid."""
    root = patch_folder(tmp_path / "site", count=3)
    spec = InputSpec(image_bands=(1, 2, 3), scale=2.0)
    start = save_model(tiny_bundle(spec, seed=3), tmp_path / "start")
    items = [tiny_scene, {"patches": root}]
    return write_config(tmp_path / "run.yaml", run_config(
        items, items, inputs={"image_bands": [1, 2, 3], "scale": 2.0}, init=str(start),
        training={**TINY_TRAINING, "epochs": 2, "select": "last"}, predict=TINY_PREDICT))


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_history_finetune_and_study_agree(mixed_config: Path, tmp_path: Path,
                                          weights: str) -> None:
    """int8: validation scores the weights as the file stores them, not the unrounded ones."""
    config = load_config(mixed_config, (f"training.weights_dtype={weights}",))
    report = finetune(config, tmp_path / "run")
    with (tmp_path / "run" / "history.csv").open() as handle:
        last = list(csv.DictReader(handle))[-1]
    model = load_model(tmp_path / "run" / "model")
    study = score_run(model, config)
    for key in ("f1", "iou", "precision", "recall", "auc"):
        assert float(last[f"val_{key}"]) == pytest.approx(report["after"][key], abs=1e-5), key
        assert study[key] == pytest.approx(report["after"][key], abs=1e-12), key
        assert model.provenance["validation"][key] == pytest.approx(study[key], abs=1e-12)
    assert study["pixels"] == report["after"]["pixels"]
    # The starting model is scored by the same function as the study scores it.
    start = score_run(load_model(config.init), config)
    assert report["before"]["f1"] == pytest.approx(start["f1"], abs=1e-12)
    assert json.loads((tmp_path / "run" / "finetune.json").read_text()) == report


def test_patches_are_counted_on_their_native_grid(mixed_config: Path) -> None:
    config = load_config(mixed_config)
    arrays = load_arrays(config.val_scenes, config.val_patches, config.inputs)
    native = 0
    for item in arrays:
        labels = getattr(item, "labels", None)
        native += int(((labels if labels is not None else item.target) != 255).sum())
    upsampled = sum(int(item.valid.sum()) for item in arrays)
    assert upsampled > native  # the 2× patches hold four times the pixels up-sampled
    confusion = score_bundle(load_model(config.init), arrays, "fp32")
    assert confusion.metrics()["pixels"] == native


def test_pooling_confusions_equals_one_matrix() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((2, 40, 40)).astype(np.float32)
    target = (rng.random((2, 40, 40)) > 0.7).astype(np.uint8)
    whole = BinaryConfusion(0.4)
    whole.update(prob, target)
    parts = BinaryConfusion(0.4)
    for i in range(2):
        part = BinaryConfusion(0.4)
        part.update(prob[i], target[i])
        parts.add(part)
    assert parts.metrics() == whole.metrics()
    with pytest.raises(ValueError, match="thresholds"):
        parts.add(BinaryConfusion(0.5))


def test_evaluate_agrees_with_the_scorer(tiny_scene: dict[str, Path], tiny_model: Path,
                                         tmp_path: Path) -> None:
    """``slidemap evaluate`` of a model on a scene (streamed to a raster, scored strip by strip)
    gives the figures the in-memory scorer gives on the same scene. The DEM here covers the
    image's nodata strip too (a DEM hole: see the test below)."""
    bundle = load_model(tiny_model)
    rows, cols = np.mgrid[0:96, 0:96]
    dem = write_raster(tmp_path / "dsm.tif", (3000.0 + 0.25 * cols + 0.1 * rows)
                       .astype(np.float32), nodata=float("nan"))
    report = api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], dem=dem,
                          model=tiny_model, out_dir=tmp_path / "eval",
                          options=PredictOptions(precision="fp32"))
    arrays = [load_scene_arrays(tiny_scene["image"], tiny_scene["mask"], dem, bundle.inputs)]
    scored = score_bundle(bundle, arrays, "fp32").metrics()
    assert report.metrics["pixels"] == scored["pixels"]
    for key in ("f1", "iou", "precision", "recall"):
        assert report.metrics[key] == pytest.approx(scored[key], abs=1e-4), key


@pytest.mark.parametrize("hole", ["rows", "columns"])
def test_evaluate_and_the_scorer_agree_next_to_a_dem_hole(tiny_scene: dict[str, Path],
                                                          tmp_path: Path, hole: str) -> None:
    """A DSM with a nodata edge where the image has data: the pixels next to it have a slope
    and a curvature (their missing neighbours take their own elevation), so validation's
    scorer and ``evaluate --image`` read the same inputs and count the same pixels, and no
    pixel is dropped or fed differently beside the hole."""
    rows, cols = np.mgrid[0:96, 0:96]
    dsm = (3000.0 + 0.25 * cols + 0.1 * rows + 3 * np.sin(rows / 7)).astype(np.float32)
    if hole == "rows":
        dsm[:12] = np.nan
    else:
        dsm[:, 60:64] = np.nan
    dem = write_raster(tmp_path / "dsm.tif", dsm, nodata=float("nan"))
    spec = InputSpec(image_bands=(1, 2, 3), dem=True, slope=True, curvature=True)
    model = save_model(tiny_bundle(spec, mean=[60.0] * 3 + [3010.0, 15.0, 0.0],
                                   std=[30.0] * 3 + [10.0, 5.0, 5.0]), tmp_path / "model")
    report = api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], dem=dem, model=model,
                          out_dir=tmp_path / "eval", options=PredictOptions(precision="fp32"))
    source = SceneSource(image=tiny_scene["image"], mask=tiny_scene["mask"], dem=dem)
    scored = score_bundle(load_model(model), load_arrays([source], [], spec), "fp32").metrics()
    with rasterio.open(tiny_scene["mask"]) as ds:
        labelled = (ds.read(1) != 255) & np.isfinite(dsm)
    assert scored["pixels"] == report.metrics["pixels"] == int(labelled.sum())
    for key in ("tp", "fp", "fn", "tn"):
        assert report.metrics[key] == scored[key], key
    for key in ("f1", "iou", "auc"):
        assert report.metrics[key] == pytest.approx(scored[key], abs=1e-4), key


def test_evaluate_and_the_scorer_agree_beside_unlabelled_imagery(tiny_scene: dict[str, Path],
                                                                 tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    """Labels that leave imagery unlabelled (a 255 stripe, what an area of interest does):
    validation's scorer reads that imagery as the context of the labelled pixels beside it,
    as the streamed map does, so both count the same confusion matrix."""
    with rasterio.open(tiny_scene["mask"]) as ds:
        labels, transform = ds.read(1), ds.transform
    labels[40:52] = 255
    mask = write_raster(tmp_path / "mask.tif", labels, transform=transform)
    report = api.evaluate(mask, image=tiny_scene["image"], dem=tiny_scene["dem"],
                          model=tiny_model, out_dir=tmp_path / "eval",
                          options=PredictOptions(precision="fp32"))
    bundle = load_model(tiny_model)
    arrays = [load_scene_arrays(tiny_scene["image"], mask, tiny_scene["dem"], bundle.inputs)]
    scored = score_bundle(bundle, arrays, "fp32").metrics()
    for key in ("pixels", "tp", "fp", "fn", "tn"):
        assert report.metrics[key] == scored[key], key
    # The untrained model calls every pixel a landslide; its ranking tells the two apart.
    assert report.metrics["auc"] == pytest.approx(scored["auc"], abs=1e-6)


def test_blocks_scored_apart_add_up_to_the_scene(tiny_scene: dict[str, Path],
                                                 tiny_model: Path) -> None:
    """crossval's per-block matrices are the scorer's matrix of the scene, split by region."""
    bundle = load_model(tiny_model)
    scene = load_scene_arrays(tiny_scene["image"], tiny_scene["mask"], tiny_scene["dem"],
                              bundle.inputs)
    whole = score_bundle(bundle, [scene], "fp32")
    left = np.zeros(scene.target.shape, dtype=bool)
    left[:, :50] = True
    predictor = Predictor([bundle], precision="fp32")
    parts = score_regions(predictor, scene, [left, ~left], PredictOptions(precision="fp32"))
    assert all(part.metrics()["pixels"] > 0 for part in parts)
    assert parts[0].add(parts[1]).metrics() == whole.metrics()


@pytest.mark.parametrize("flips", [(True, False), (False, True), (True, True)])
def test_a_scene_stored_south_up_or_east_to_west_is_scored_as_north_up(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path,
        flips: tuple[bool, bool]) -> None:
    """Validation (train, finetune, crossval) predicts a scene stored south up and/or east to
    west as ``slidemap predict`` maps it: north up, its windows laid from the north-west
    corner. It was predicted as stored, upside down: other probabilities, another AUC, and
    so another kept epoch for the same ground."""
    bundle = load_model(tiny_model)
    options = PredictOptions(tile=40, overlap=8, precision="fp32")  # windows at 0, 32, 56
    mirrored = mirrored_scene(tiny_scene, tmp_path / "mirrored", flips)
    probs, figures = [], []
    for scene in (tiny_scene, mirrored):
        arrays = load_scene_arrays(scene["image"], scene["mask"], scene["dem"], bundle.inputs)
        probs.append(native_prob(Predictor([bundle], precision="fp32"), arrays, options)[0])
        figures.append(score_bundle(bundle, [arrays], "fp32").metrics())
    axes = tuple(axis for axis, flip in enumerate(flips) if flip)
    np.testing.assert_allclose(np.flip(probs[1], axes), probs[0], atol=1e-6, equal_nan=True)
    assert figures[1]["auc"] == pytest.approx(figures[0]["auc"], abs=1e-6)


def test_evaluate_takes_rounding_past_1_but_refuses_values_off_the_scale(tiny_scene, tmp_path
                                                                         ) -> None:
    with rasterio.open(tiny_scene["mask"]) as ds:
        labels, transform = ds.read(1), ds.transform
    prob = np.where(labels == 1, np.float32(1.0000001), np.float32(0.0))
    rounded = write_raster(tmp_path / "rounded.tif", prob, transform=transform)
    result = api.evaluate(tiny_scene["mask"], prediction=rounded)
    assert result.metrics["f1"] == 1.0
    off = write_raster(tmp_path / "off.tif", prob * 1.1, transform=transform)
    with pytest.raises(SlidemapError, match="outside 0-1"):
        api.evaluate(tiny_scene["mask"], prediction=off)


def test_a_patch_map_without_georeference_is_scored_against_its_mask(tmp_path) -> None:
    """A patch set's maps carry no georeference, nor do its masks (a Landslide4Sense
    ``mask_N.h5`` as GDAL reads it): the pair, of one size, was refused as "label raster has no
    CRS", since a raster without a geotransform opened past its overviews got uninitialised
    memory as its transform, never equal to the other's."""
    labels = np.zeros((24, 24), np.uint8)
    labels[4:12, 6:14] = 1
    truth, prob = tmp_path / "mask_1.tif", tmp_path / "image_1_prob.tif"
    for path, array in ((truth, labels), (prob, labels * np.float32(0.9))):
        with warnings.catch_warnings():  # no georeference at all is the point
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "w", driver="GTiff", width=24, height=24, count=1,
                               dtype=array.dtype.name) as ds:  # as predict writes a patch's
                ds.write(array, 1)
    result = api.evaluate(truth, prediction=prob)
    assert (result.metrics["tp"], result.metrics["fp"], result.metrics["fn"]) == (64, 0, 0)


def test_a_truth_without_landslide_pixels_warns(tiny_scene, tmp_path) -> None:
    """A 0/255 mask (a patch set's coding) has no 1: every landslide is ignored, and F1 0 with
    AUC NaN came without a word."""
    with rasterio.open(tiny_scene["mask"]) as ds:
        labels, transform = ds.read(1), ds.transform
    coded = write_raster(tmp_path / "truth_0_255.tif", np.where(labels == 1, 255, labels)
                         .astype(np.uint8), transform=transform, nodata=None)
    prob = write_raster(tmp_path / "prob.tif", (labels == 1) * np.float32(0.8) + np.float32(0.1),
                        transform=transform)  # probabilities, not a mask (that warns too)
    with pytest.warns(SlidemapWarning, match="no landslide pixel .* recode a 0/255 mask"):
        api.evaluate(coded, prediction=prob)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        api.evaluate(tiny_scene["mask"], prediction=prob)


def test_a_truth_without_background_pixels_warns(tiny_scene, tmp_path) -> None:
    """A truth that is all landslide where it is scored leaves AUC NaN (null in metrics.json):
    that came without a word, while an all-background truth warned."""
    with rasterio.open(tiny_scene["mask"]) as ds:
        labels, transform = ds.read(1), ds.transform
    slid = write_raster(tmp_path / "all_landslide.tif", np.where(labels == 255, 255, 1)
                        .astype(np.uint8), transform=transform, nodata=255)
    prob = write_raster(tmp_path / "prob.tif", (labels == 1) * np.float32(0.8) + np.float32(0.1),
                        transform=transform)
    with pytest.warns(SlidemapWarning, match="no background pixel .* AUC is undefined"):
        result = api.evaluate(slid, prediction=prob)
    assert np.isnan(result.metrics["auc"])


def test_a_mask_scored_as_a_prediction_warns_that_its_auc_is_no_ranking(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """predict's _mask.tif passed to evaluate --prediction: its F1 is the mask's, but its AUC
    (0.94 against the probabilities' 0.99 on the sample) and best threshold rank two values."""
    with rasterio.open(tiny_scene["mask"]) as src:
        labels = src.read(1)
    prob = np.where(labels == 255, np.nan, np.clip(labels * 0.8 + 0.1, 0, 1)).astype(np.float32)
    probabilities = write_raster(tmp_path / "prob.tif", prob, nodata=float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        score_raster(probabilities, tiny_scene["mask"])
    with pytest.warns(SlidemapWarning, match=r"holds only 0 and 1 \(a mask\).* _prob\.tif"):
        confusion = score_raster(tiny_scene["mask"], tiny_scene["mask"])
    assert confusion.metrics()["f1"] == 1.0


def _wide_vrt(source: Path, path: Path, width: int) -> Path:
    """A VRT ``width`` px wide and as high as ``source``, its first columns ``source`` and the
    rest nodata (a kilobyte, whatever ``width``)."""
    with rasterio.open(source) as ds:
        crs, height, dtype, nodata = ds.crs.to_wkt(), ds.height, ds.dtypes[0], ds.nodata
    kind = {"uint8": "Byte", "float32": "Float32"}[dtype]
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs}</SRS>'
        f"<GeoTransform>469200, 0.5, 0, 3446200, 0, -0.5</GeoTransform>"
        f'<VRTRasterBand dataType="{kind}" band="1"><NoDataValue>{nodata}</NoDataValue>'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")
    return path


def test_a_wide_prediction_is_scored_in_windows_of_bounded_width(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A strip as wide as the scene grew with its width (2.7 GB for 1024 rows of a 100 000 px
    wide mosaic, then out of memory): windows are at most WINDOW_COLUMNS wide, and the
    counts are those of the scene's own pixels."""
    with rasterio.open(tiny_scene["mask"]) as src:
        labels = src.read(1)
    prob = np.where(labels == 255, np.nan, np.clip(labels * 0.7 + 0.2, 0, 1)).astype(np.float32)
    narrow = write_raster(tmp_path / "prob.tif", prob, nodata=float("nan"))
    width = 3 * raster.WINDOW_COLUMNS + 5
    wide_prob = _wide_vrt(narrow, tmp_path / "prob.vrt", width)
    wide_truth = _wide_vrt(tiny_scene["mask"], tmp_path / "truth.vrt", width)
    read = Scene.read
    widths: list[int] = []

    def spy(scene: Scene, window: Window, *args: object, **kwargs: object) -> dict:
        widths.append(int(window.width))
        return read(scene, window, *args, **kwargs)

    monkeypatch.setattr(Scene, "read", spy)
    wide = score_raster(wide_prob, wide_truth)
    assert max(widths) <= raster.WINDOW_COLUMNS and sum(widths) >= width
    assert np.array_equal(wide.counts, score_raster(narrow, tiny_scene["mask"]).counts)


def test_a_vast_prediction_is_scored_only_where_the_truth_lies(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 000 000² px prediction mosaic against a 96² px truth walked every window of the
    mosaic (past 120 s); outside the truth every pixel is unlabelled, so the figures are the
    same when only the truth's windows are read."""
    with rasterio.open(tiny_scene["mask"]) as src:
        labels = src.read(1)
    prob = np.where(labels == 255, np.nan, np.clip(labels * 0.7 + 0.2, 0, 1)).astype(np.float32)
    narrow = write_raster(tmp_path / "prob.tif", prob, nodata=float("nan"))
    vast = declared_vrt(narrow, tmp_path / "vast.vrt", 1_000_000)
    read = Scene.read
    windows: list[Window] = []

    def spy(scene: Scene, window: Window, *args: object, **kwargs: object) -> dict:
        windows.append(window)
        assert len(windows) < 10, "windows read far from the truth"  # not 238 000 of them
        return read(scene, window, *args, **kwargs)

    monkeypatch.setattr(Scene, "read", spy)
    scored = score_raster(vast, tiny_scene["mask"])
    assert len(windows) == 1 and windows[0].width * windows[0].height <= 98 * 98, windows
    assert np.array_equal(scored.counts, score_raster(narrow, tiny_scene["mask"]).counts)


def test_metrics_json_names_its_inputs_absolutely(tiny_scene: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Truth and prediction named relatively were recorded as written, so metrics.json read
    from another folder (report, a later script) pointed nowhere; predict's provenance names
    its inputs absolutely."""
    monkeypatch.chdir(tmp_path)
    api.evaluate(tiny_scene["mask"].name, prediction=tiny_scene["mask"].name,
                 out_dir=Path("eval"))
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["truth"] == record["prediction"] == str(tiny_scene["mask"].resolve())
