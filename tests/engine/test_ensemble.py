"""Ensembles average their members' probabilities, each normalising with its own statistics."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import RGB_SLOPE, patch_folder, rewrite_sidecar, tiny_bundle

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.infer.ensemble import Predictor
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import PredictDefaults, load_model, save_model


def member(tmp_path: Path, seed: int, mean: float, spec: InputSpec = RGB_SLOPE) -> Path:
    """An untrained width-4 U-Net with its own weights and statistics."""
    channels = len(spec.channels)
    bundle = tiny_bundle(spec, seed=seed, mean=[mean] * channels, std=[25.0] * channels)
    return save_model(bundle, tmp_path / f"m{seed}")


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_is_the_mean_of_its_members(tmp_path: Path, tta: bool) -> None:
    bundles = [load_model(member(tmp_path, 1, 50.0)), load_model(member(tmp_path, 2, 70.0))]
    rng = np.random.default_rng(0)
    raw = [rng.uniform(0, 120, (4, 32, 32)).astype(np.float32) for _ in range(2)]
    valid = [np.ones((32, 32), bool) for _ in raw]
    valid[1][:, :5] = False
    both = Predictor(bundles, tta=tta, precision="fp32")(raw, valid)
    alone = [Predictor([b], tta=tta, precision="fp32")(raw, valid) for b in bundles]
    assert not np.allclose(alone[0][0], alone[1][0])  # the members differ
    for index, prob in enumerate(both):
        np.testing.assert_allclose(prob, (alone[0][index] + alone[1][index]) / 2, atol=1e-6)


def test_ensemble_scene_map_is_the_mean_of_member_maps(tiny_scene: dict, tmp_path: Path) -> None:
    models = [member(tmp_path, 1, 50.0), member(tmp_path, 2, 70.0)]
    options = PredictOptions(tile=48, overlap=16, precision="fp32")
    maps = []
    for name, model in (("a", [models[0]]), ("b", [models[1]]), ("ab", models)):
        result = api.predict(tiny_scene["image"], tmp_path / name, tiny_scene["dem"], model,
                             options, prob_dtype="float32")
        with rasterio.open(result.prob) as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[2], (maps[0] + maps[1]) / 2, atol=1e-6, equal_nan=True)


def test_members_must_read_the_same_inputs(tmp_path: Path) -> None:
    rgb = load_model(member(tmp_path, 1, 50.0, InputSpec(image_bands=(1, 2, 3))))
    with pytest.raises(SlidemapError, match="read different inputs"):
        Predictor([load_model(member(tmp_path, 2, 50.0)), rgb])


def test_members_at_other_patch_scales_combine_at_the_scale_chosen(tmp_path: Path) -> None:
    """inputs.scale resizes patches only: members trained at 1 and 2 were refused as reading
    'different inputs ... same bands and resolution', for scenes (which ignore it) and even with
    --scale, which resizes the patches alike for all. A patch set needs --scale to pick one."""
    rgb = InputSpec(image_bands=(1, 2, 3))
    models = [save_model(tiny_bundle(rgb.model_copy(update={"scale": scale}), seed=seed),
                         tmp_path / f"s{seed}") for seed, scale in enumerate((1.0, 2.0))]
    assert Predictor([load_model(m) for m in models]).spec.image_bands == (1, 2, 3)
    root = patch_folder(tmp_path / "set", count=1)
    options = PredictOptions(tile=16, overlap=0, precision="fp32")
    with pytest.raises(SlidemapError, match=r"different inputs.scale \(1, 2, in --model order\):"
                                            " pass --scale to choose one for all"):
        api.predict_patches(root, tmp_path / "unchosen", models, options)
    maps = []
    for name, chosen in (("a", models[:1]), ("b", models[1:]), ("ab", models)):
        api.predict_patches(root, tmp_path / name, chosen, options, scale=2.0)
        with rasterio.open(tmp_path / name / "p0_prob.tif") as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[2], (maps[0] + maps[1]) / 2, atol=1e-6)


def member_predicting(tmp_path: Path, seed: int, defaults: PredictDefaults) -> Path:
    """A member whose sidecar sets its own windows and scales."""
    bundle = tiny_bundle(RGB_SLOPE, seed=seed, mean=[60.0] * 4, std=[25.0] * 4)
    bundle.predict = defaults
    return save_model(bundle, tmp_path / f"p{seed}")


@pytest.mark.parametrize(("defaults", "option"), [
    (PredictDefaults(tile=48, overlap=16, scales=(1.0, 0.5)), "--scales"),
    (PredictDefaults(tile=32, overlap=16, scales=(1.0,)), "--tile"),
    (PredictDefaults(tile=48, overlap=8, scales=(1.0,)), "--overlap"),
])
def test_members_with_other_windows_or_scales_need_one_chosen(
        tiny_scene: dict, tmp_path: Path, defaults: PredictDefaults, option: str) -> None:
    # the first member's windows and scales served all: the map changed with --model's order
    models = [member_predicting(tmp_path, 1, PredictDefaults(tile=48, overlap=16, scales=(1.0,))),
              member_predicting(tmp_path, 2, defaults)]
    with pytest.raises(SlidemapError, match=f"pass {option} to choose one for all"):
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], models,
                    PredictOptions(precision="fp32"))
    chosen = PredictOptions(tile=48, overlap=16, scales=(1.0,), precision="fp32")
    maps = []
    for name, ordered in (("ab", models), ("ba", models[::-1])):
        result = api.predict(tiny_scene["image"], tmp_path / name, tiny_scene["dem"], ordered,
                             chosen, prob_dtype="float32")
        with rasterio.open(result.prob) as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6, equal_nan=True)


def test_members_with_other_thresholds_warn_which_one_draws_the_mask(
        tiny_scene: dict, tmp_path: Path) -> None:
    """Members' thresholds were averaged in silence: the mask was drawn at a value that no
    model file holds. The mean stays (the map does not depend on --model's order) but it is
    said, with --threshold as the way to choose; members that agree, or --threshold, say
    nothing."""
    low, high = member(tmp_path, 1, 50.0), member(tmp_path, 2, 70.0)
    rewrite_sidecar(high, threshold=0.9)
    options = PredictOptions(tile=48, overlap=16, precision="fp32")
    with pytest.warns(api.SlidemapWarning, match=r"different thresholds \(0.5, 0.9, in --model "
                      r"order\): the mask is drawn at their mean, 0.7; pass --threshold"):
        result = api.predict(tiny_scene["image"], tmp_path / "mixed", tiny_scene["dem"],
                             [low, high], options)
    with rasterio.open(result.mask) as ds:
        assert ds.tags()["SLIDEMAP_THRESHOLD"] == "0.7"
    with warnings.catch_warnings():
        warnings.simplefilter("error", api.SlidemapWarning)
        api.predict(tiny_scene["image"], tmp_path / "chosen", tiny_scene["dem"], [low, high],
                    replace(options, threshold=0.6))
        Predictor([load_model(low), load_model(member(tmp_path, 3, 60.0))])
