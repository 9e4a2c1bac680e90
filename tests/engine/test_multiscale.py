"""Multi-scale prediction and the prediction defaults a model file carries (``predict``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from factories import rewrite_sidecar, tiny_run

from slidemap import api
from slidemap.data.normalization import BandStats, normalise
from slidemap.errors import SlidemapError
from slidemap.infer.ensemble import Predictor
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import PredictDefaults, load_model, save_model
from slidemap.schema.config import parse_config
from slidemap.train.loop import train

MULTI = (1.0, 0.5)


def windows(count: int = 2, size: tuple[int, int] = (32, 32)) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    raw = [rng.uniform(0, 120, (4, *size)).astype(np.float32) for _ in range(count)]
    return raw, [np.ones(size, bool) for _ in raw]


def test_half_scale_is_the_model_on_the_area_mean_brought_back(tiny_model: Path) -> None:
    bundle = load_model(tiny_model)
    raw, valid = windows()
    got = Predictor([bundle], precision="fp32", scales=(0.5,))(raw, valid)
    x = torch.from_numpy(np.stack([normalise(r, BandStats(bundle.mean, bundle.std), valid=v)
                                   for r, v in zip(raw, valid, strict=True)]))
    with torch.no_grad():
        small = torch.sigmoid(bundle.model(F.avg_pool2d(x, 2)))
    expected = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(np.stack(got), expected.numpy(), atol=1e-5)


def test_scales_are_averaged(tiny_model: Path) -> None:
    bundle = load_model(tiny_model)
    raw, valid = windows()
    each = [Predictor([bundle], precision="fp32", scales=(s,))(raw, valid) for s in MULTI]
    both = Predictor([bundle], precision="fp32", scales=MULTI)(raw, valid)
    assert not np.allclose(each[0][0], each[1][0])
    for index, prob in enumerate(both):
        np.testing.assert_allclose(prob, (each[0][index] + each[1][index]) / 2, atol=1e-6)


def test_odd_windows_keep_their_shape_at_every_scale(tiny_model: Path) -> None:
    raw, valid = windows(1, (33, 21))
    prob = Predictor([load_model(tiny_model)], precision="fp32", scales=(1.0, 0.5, 0.25),
                     tta=True)(raw, valid)[0]
    assert prob.shape == (33, 21)
    assert np.isfinite(prob).all()


def test_model_file_carries_its_prediction_defaults(tiny_model: Path, tmp_path: Path) -> None:
    assert load_model(tiny_model).predict == PredictDefaults(256, 64, (1.0,))
    bundle = replace(load_model(tiny_model), predict=PredictDefaults(48, 16, MULTI))
    loaded = load_model(save_model(bundle, tmp_path / "multi"))
    assert loaded.predict == PredictDefaults(48, 16, MULTI)
    assert Predictor([loaded]).scales == MULTI
    assert Predictor([loaded], scales=(1.0,)).scales == (1.0,)  # the caller's choice wins


def test_files_without_prediction_defaults_load_with_the_plain_ones(tiny_model: Path) -> None:
    rewrite_sidecar(tiny_model, predict=None)
    assert load_model(tiny_model).predict == PredictDefaults()


@pytest.mark.parametrize("predict", [{"scales": []}, {"scales": [1.0, 1.0]}, {"scales": [8.0]},
                                     {"tile": 4}, {"tile": "big"}, {"windows": 3}])
def test_bad_prediction_defaults_in_a_sidecar_are_refused(tiny_model: Path, predict: dict
                                                         ) -> None:
    rewrite_sidecar(tiny_model, predict=predict)
    with pytest.raises(SlidemapError, match="malformed"):
        load_model(tiny_model)


def test_scene_prediction_uses_the_model_defaults(tiny_scene: dict, tiny_model: Path,
                                                  tmp_path: Path) -> None:
    """A model whose file says tile 48, overlap 16, scales 1 + 0.5 maps a scene exactly as a
    plain model given those options, and not as the plain model on its own defaults."""
    carrying = save_model(replace(load_model(tiny_model), predict=PredictDefaults(48, 16, MULTI)),
                          tmp_path / "carrying")
    maps = []
    for name, model, options in (
            ("defaults", carrying, PredictOptions(precision="fp32")),
            ("explicit", tiny_model, PredictOptions(48, 16, precision="fp32", scales=MULTI)),
            ("single", tiny_model, PredictOptions(48, 16, precision="fp32"))):
        result = api.predict(tiny_scene["image"], tmp_path / name, tiny_scene["dem"], model,
                             options, prob_dtype="float32")
        with rasterio.open(result.prob) as ds:
            maps.append(ds.read(1))
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.allclose(maps[1], maps[2], equal_nan=True)


def read_maps(prob_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(prob_path) as prob, rasterio.open(mask_path) as mask:
        return prob.read(1), mask.read(1)


def test_the_mask_follows_the_model_threshold_or_the_one_given(
        tiny_scene: dict, tiny_model: Path, tmp_path: Path) -> None:
    """The mask (and inventory) is drawn at the sidecar's threshold; ``threshold`` overrides it
    in predict and in evaluate, whose scores then use the same value as its mask."""
    plain = api.predict(tiny_scene["image"], tmp_path / "plain", tiny_scene["dem"], tiny_model,
                        PredictOptions(precision="fp32"), prob_dtype="float32")
    prob, _ = read_maps(plain.prob, plain.mask)
    valid = ~np.isnan(prob)
    cut = float(np.quantile(prob[valid], 0.3))  # a threshold that changes the mask
    assert ((prob[valid] >= cut) != (prob[valid] >= 0.5)).any()
    lowered = save_model(replace(load_model(tiny_model), threshold=cut), tmp_path / "lowered")
    for name, model, threshold in (("carried", lowered, None), ("given", tiny_model, cut)):
        result = api.predict(tiny_scene["image"], tmp_path / name, tiny_scene["dem"], model,
                             PredictOptions(precision="fp32", threshold=threshold),
                             prob_dtype="float32")
        _, mask = read_maps(result.prob, result.mask)
        np.testing.assert_array_equal(mask[valid], prob[valid] >= cut)
    report = api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], dem=tiny_scene["dem"],
                          model=tiny_model, out_dir=tmp_path / "scored", threshold=cut,
                          options=PredictOptions(precision="fp32"))
    _, mask = read_maps(report.prediction, next((tmp_path / "scored").glob("*mask*.tif")))
    np.testing.assert_array_equal(mask[valid], prob[valid] >= cut)
    assert report.threshold == cut


def test_training_writes_the_configured_defaults(tiny_scene: dict, tmp_path: Path) -> None:
    raw = tiny_run(tiny_scene, epochs=1)
    raw["predict"].update(scales=[1, 0.5], threshold=0.4)
    train(parse_config(raw), tmp_path / "run")
    bundle = load_model(tmp_path / "run" / "model.safetensors")
    assert bundle.predict == PredictDefaults(32, 8, MULTI)
    assert bundle.threshold == 0.4


@pytest.mark.parametrize("threshold", [0, 1, 1.5, "half", True, None])
def test_bad_thresholds_in_a_config_are_refused(tiny_scene: dict, threshold: object) -> None:
    raw = tiny_run(tiny_scene)
    raw["predict"]["threshold"] = threshold
    with pytest.raises(SlidemapError, match="threshold"):
        parse_config(raw)


@pytest.mark.parametrize("scales", [[], [0], ["half"], 0.5, [1.0, 5.0]])
def test_bad_scales_in_a_config_are_refused(tiny_scene: dict, scales: object) -> None:
    raw = tiny_run(tiny_scene)
    raw["predict"]["scales"] = scales
    with pytest.raises(SlidemapError, match="scales"):
        parse_config(raw)


@pytest.mark.parametrize("value", ["1.5", "nan", "-0.2", "0"])
def test_a_bad_threshold_for_a_prediction_raster_is_refused_not_scored(
        run_cli, tiny_scene: dict, tiny_model: Path, tmp_path: Path, value: str) -> None:
    """``evaluate --prediction P --threshold 1.5`` scored every pixel background (F1 0, exit 0)
    as if the map were empty; it is now the one-line usage error (exit 2) predict gives."""
    mapped = api.predict(tiny_scene["image"], tmp_path / "map", tiny_scene["dem"], tiny_model)
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", mapped.prob,
                        "--threshold", value, "--out", tmp_path / "scores")
    assert code == 2 and err.count("\n") == 1 and "threshold must be a probability" in err
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize(("option", "value"), [
    *(("scales", v) for v in ["1,half", "0", "1,1", ""]),
    *(("threshold", v) for v in ["0", "1", "1.5"])])
def test_bad_scales_and_thresholds_on_the_command_line_are_one_line_errors(
        run_cli, tiny_scene: dict, tiny_model: Path, tmp_path: Path, option: str, value: str
) -> None:
    code, err = run_cli("predict", tiny_scene["image"], "--out", tmp_path / "out", "--model",
                        tiny_model, f"--{option}", value)
    assert code == 2  # a value of the wrong form, as --tile 8 (a threshold exited 1)
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
