"""The window engine: one way to cut, batch, run, blend and hand probabilities on.

A scene, the same pixels as an in-memory array, and the hard-example maps of training all go
through ``slidemap.infer.engine``; these tests pin its figures (``tests/fixtures/engine_pin.npz``:
first those of the three predictors it replaced, from main at 02d5830; written again by running
this file on main where the inputs change on purpose, as when terrain's border was mended) and
check that a scene and its pixels cut as an array give the same probabilities.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from factories import square_scene

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.normalization import BandStats, normalise
from slidemap.data.terrain import BoxSums, relief, roughness
from slidemap.errors import SlidemapError
from slidemap.infer.backends import TorchBackend
from slidemap.infer.engine import ArraySink, blend_weights, network_runner, predict_array
from slidemap.infer.ensemble import Predictor
from slidemap.infer.patches import native_prob, predict_arrays
from slidemap.infer.predict import PredictOptions, predict_scene
from slidemap.io.modelfile import ModelBundle, PredictDefaults, load_model, save_model
from slidemap.io.rasters import RasterFormat
from slidemap.models import build_model
from slidemap.workflows.patches import predict_patch_set

PIN = Path(__file__).parents[1] / "fixtures" / "engine_pin.npz"
OPTIONS = PredictOptions(tile=32, overlap=8, batch_size=3, precision="fp32")


def pin_scene(folder: Path, factor: int) -> dict[str, Path]:
    """90 × 110 px at 0.5 m: a bright square, a nodata corner, a wavy DSM."""
    return square_scene(folder / f"pin{factor}.tif", (90, 110), (slice(30, 70), slice(40, 90)),
                        (20, 16), seed=7)


def pin_model(folder: Path, factor: int) -> Path:
    """A seeded width-4 U-Net on RGB + slope at ``factor`` × 0.5 m, scales 1 and 0.5."""
    torch.manual_seed(3)
    spec = InputSpec(image_bands=(1, 2, 3), slope=True,
                     resolution_m=None if factor == 1 else 0.5 * factor)
    bundle = ModelBundle(model=build_model("unet", 4, width=4, depth=2), architecture="unet",
                         width=4, options={"depth": 2}, inputs=spec,
                         mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0],
                         predict=PredictDefaults(tile=32, overlap=8, scales=(1.0, 0.5)))
    return save_model(bundle, folder / f"pin{factor}")


def scene_prob(folder: Path, factor: int) -> np.ndarray:
    scene, model = pin_scene(folder, factor), pin_model(folder, factor)
    predictor = Predictor([load_model(model)], precision="fp32")
    prob, mask = folder / f"prob{factor}.tif", folder / f"mask{factor}.tif"
    predict_scene(predictor, scene["image"], scene["dem"], prob, mask, OPTIONS,
                  fmt=RasterFormat("float32"))  # the engine's own float32 sums
    with rasterio.open(prob) as ds:
        return ds.read(1)


@pytest.mark.parametrize("factor", [1, 2])
def test_scene_probabilities_are_pinned(tmp_path, factor) -> None:
    np.testing.assert_allclose(scene_prob(tmp_path, factor), np.load(PIN)[f"scene{factor}"],
                               rtol=0, atol=1e-6, equal_nan=True)


def arrays_of(folder: Path, factor: int) -> tuple[Predictor, SceneArrays]:
    scene, model = pin_scene(folder, factor), pin_model(folder, factor)
    bundle = load_model(model)
    return (Predictor([bundle], precision="fp32"),
            load_scene_arrays(scene["image"], None, scene["dem"], bundle.inputs))


@pytest.mark.parametrize("factor", [1, 2])
def test_array_and_hard_example_probabilities_are_pinned(tmp_path, factor) -> None:
    predictor, arrays = arrays_of(tmp_path, factor)
    prob = predict_arrays(predictor, arrays.x, arrays.valid, OPTIONS)
    np.testing.assert_allclose(prob, np.load(PIN)[f"array{factor}"], rtol=0, atol=1e-6)
    bundle = load_model(tmp_path / f"pin{factor}.safetensors")
    x = normalise(arrays.x, BandStats(bundle.mean, bundle.std), valid=arrays.valid)
    tiles = predict_array(network_runner(bundle.model.eval(), "fp32"), x, arrays.valid, 32, 0, 3)
    np.testing.assert_allclose(tiles, np.load(PIN)[f"tiles{factor}"], rtol=0, atol=1e-6)


def test_a_scene_and_its_pixels_as_an_array_give_the_same_probabilities(tmp_path) -> None:
    """At the model's own resolution a scene's windows are the array's windows: the streamed,
    column-blocked scene path and the in-memory path blend the same windows alike."""
    scene = scene_prob(tmp_path, 1)
    predictor, arrays = arrays_of(tmp_path, 1)
    prob, valid = native_prob(predictor, arrays, OPTIONS)
    assert np.array_equal(np.isfinite(scene), valid)
    np.testing.assert_allclose(scene[valid], prob[valid], rtol=0, atol=1e-6)


def test_blend_weights_are_shared_and_read_only() -> None:
    weights = blend_weights(32, 24, 4)
    assert weights is blend_weights(32, 24, 4)
    assert weights.min() > 0 and weights[16, 12] == 1.0 and weights[0, 0] < weights[4, 4]
    with pytest.raises(ValueError):
        weights[0, 0] = 1.0


@pytest.mark.parametrize("shape", [(40, 52), (3, 90)])
def test_shared_box_sums_give_each_descriptors_own_values(shape) -> None:
    """Relief at several radii and roughness from one set of padded tables equal each computed
    alone, bit for bit, clipped squares at the edges included."""
    rng = np.random.default_rng(2)
    dem = (3000 + np.cumsum(rng.random(shape), axis=0)).astype(np.float32)
    dem[: shape[0] // 4, : shape[1] // 3] = np.nan
    sums = BoxSums(dem, 64)
    for radius in (1, 5, 64):
        expected = _brute_relief(dem, radius)
        np.testing.assert_allclose(relief(sums, radius), expected, rtol=0, atol=1e-3)
        assert np.array_equal(relief(sums, radius), relief(dem, radius), equal_nan=True)
        assert np.array_equal(roughness(sums, radius), roughness(dem, radius), equal_nan=True)
    with pytest.raises(ValueError):
        sums.box("count", 65)


def test_box_sums_of_a_huge_radius_take_the_windows_memory_not_the_radius() -> None:
    """A model file may ask for relief within 100 km (50 000 working px): the tables stay the
    window's size (they were padded by the radius, gigabytes for a 256 px scene), and the
    relief is the one of a square covering the whole window."""
    rng = np.random.default_rng(3)
    dem = (3000 + np.cumsum(rng.random((40, 52)), axis=0)).astype(np.float32)
    dem[:10, :10] = np.nan
    sums = BoxSums(dem, 50_000)
    huge = relief(sums, 50_000)
    assert max(table.nbytes for table in sums._tables.values()) < 200 * 200 * 8
    np.testing.assert_allclose(huge, _brute_relief(dem, 52), rtol=0, atol=1e-3)
    assert np.array_equal(huge, relief(dem, 52), equal_nan=True)
    assert np.array_equal(roughness(sums, 50_000), roughness(dem, 52), equal_nan=True)


def _brute_relief(dem: np.ndarray, radius: int) -> np.ndarray:
    h, w = dem.shape
    out = np.full(dem.shape, np.nan, dtype=np.float32)
    for i in range(h):
        for j in range(w):
            if np.isfinite(dem[i, j]):
                box = dem[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
                out[i, j] = dem[i, j] - np.nanmean(box.astype(np.float64))
    return out


def test_other_scales_on_a_spare_core_give_the_same_probabilities(tmp_path, monkeypatch) -> None:
    """The model at its other scales in a second thread, or one scale after the other: the same
    operations, summed in the same order, so the same figures bit for bit."""
    predictor, arrays = arrays_of(tmp_path, 2)
    assert len(predictor.scales) == 2
    monkeypatch.setattr("slidemap.infer.ensemble.spare_core_pool", lambda: None)
    alone = predict_arrays(predictor, arrays.x, arrays.valid, OPTIONS)
    with ThreadPoolExecutor(1) as pool:
        monkeypatch.setattr("slidemap.infer.ensemble.spare_core_pool", lambda: pool)
        beside = predict_arrays(predictor, arrays.x, arrays.valid, OPTIONS)
    assert np.array_equal(alone, beside)


def test_a_scene_and_its_pixels_cut_as_a_patch_give_the_same_probabilities(tmp_path) -> None:
    """The scene written as a patch set (image and DEM folders, as a user would cut it) and
    predicted by ``predict_patch_set``: the same probabilities as the scene, pixel for pixel."""
    scene = scene_prob(tmp_path, 1)
    files = pin_scene(tmp_path, 1)
    root = tmp_path / "patches"
    for kind, source in (("images", files["image"]), ("dem", files["dem"])):
        (root / kind).mkdir(parents=True)
        (root / kind / "pin.tif").write_bytes(source.read_bytes())
    predictor = Predictor([load_model(tmp_path / "pin1.safetensors")], precision="fp32")
    predict_patch_set(predictor, root, tmp_path / "out", OPTIONS)
    with rasterio.open(tmp_path / "out" / "pin_prob.tif") as ds:
        patch = ds.read(1)
    both = np.isfinite(scene) & np.isfinite(patch)
    assert both.sum() > 0.9 * np.isfinite(scene).sum()
    np.testing.assert_allclose(patch[both], scene[both], rtol=0, atol=1e-6)


def test_blended_probabilities_stay_within_0_and_1() -> None:
    """A window a rounding error above 1 (1 + 1e-7 after resampling or blending) must not give
    a probability file that `evaluate` then refuses as "outside 0-1"."""
    sink = ArraySink(2, 3)
    sink.add(slice(0, 2), slice(0, 3), np.full((2, 3), 1.0000001, np.float32),
             np.full((2, 3), 0.7, np.float32))
    sink.add(slice(0, 2), slice(0, 2), np.full((2, 2), -1e-7, np.float32),
             np.full((2, 2), 1e-30, np.float32))
    prob = sink.result()
    assert prob.max() == 1.0 and prob.min() >= 0.0


def test_compiling_without_a_cpp_compiler_is_one_line() -> None:
    """torch.compile builds the model on its first call: without a working C++ compiler
    predict --compile and bench --compile ended in inductor's InvalidCxxCompiler traceback."""
    compiled = TorchBackend(build_model("unet", 4, width=4), "fp32", compile=True)
    # without the graph cache: a build cached by another test would need no compiler
    no_compiler = {"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}
    with torch._inductor.config.patch(no_compiler), pytest.raises(
            SlidemapError, match=r"^--compile failed: .*InvalidCxxCompiler") as caught:
        compiled(np.zeros((1, 4, 32, 32), np.float32))
    assert "\n" not in str(caught.value)


def test_a_compiled_model_maps_windows_of_several_shapes() -> None:
    """A scene smaller than a window, or its edge windows, give the compiled model a second
    shape; recompiling for it once crashed in torch's dynamic-shape analysis."""
    torch.manual_seed(0)
    model = build_model("unet", 4, width=4)
    eager, compiled = TorchBackend(model, "fp32"), TorchBackend(model, "fp32", compile=True)
    rng = np.random.default_rng(0)
    for shape in ((48, 64), (32, 40)):
        batch = rng.standard_normal((1, 4, *shape)).astype(np.float32)
        np.testing.assert_allclose(compiled(batch), eager(batch), atol=1e-5)


def pinned_outputs(folder: Path) -> dict[str, np.ndarray]:
    """The figures the pin file holds, from the code as it is."""
    outputs = {}
    for factor in (1, 2):
        predictor, arrays = arrays_of(folder, factor)
        bundle = load_model(folder / f"pin{factor}.safetensors")
        x = normalise(arrays.x, BandStats(bundle.mean, bundle.std), valid=arrays.valid)
        outputs[f"scene{factor}"] = scene_prob(folder, factor)
        outputs[f"array{factor}"] = predict_arrays(predictor, arrays.x, arrays.valid, OPTIONS)
        outputs[f"tiles{factor}"] = predict_array(network_runner(bundle.model.eval(), "fp32"), x,
                                                  arrays.valid, 32, 0, 3)
    return outputs


if __name__ == "__main__":  # writes the pin file: run on main only
    with tempfile.TemporaryDirectory() as scratch:
        np.savez(PIN, **pinned_outputs(Path(scratch)))
