"""New sites: patch sets in run configs, L4S bands, scale promotion, separated normalisation,
pseudo-labels, fine-tuning and self-training, on tiny fixtures written here."""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from factories import (
    PATCH_SIZE,
    TINY_NET,
    TINY_PREDICT,
    TINY_TRAINING,
    interrupt_at_epoch_2,
    mirrored_scene,
    patch_folder,
    tiny_bundle,
    tiny_run,
    write_config,
    write_scene,
)
from rasterio.windows import Window

from slidemap import api
from slidemap.data.channels import InputSpec, stack_channels
from slidemap.data.dataset import SceneArrays
from slidemap.data.dataset import scene_stats as dataset_scene_stats
from slidemap.data.normalization import BandStats, compute_stats
from slidemap.data.scaling import demote, promote
from slidemap.data.scene import Scene
from slidemap.data.sources import load_arrays, open_patch_set, select, shared_with_training
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.ensemble import Predictor
from slidemap.infer.patches import predict_arrays
from slidemap.infer.predict import PredictOptions
from slidemap.infer.separated import patch_stats, scene_stats
from slidemap.io.modelfile import load_model, save_model
from slidemap.schema.config import PatchSource, Split, load_config, parse_config
from slidemap.train import loop
from slidemap.train import selftrain as selftrain_module
from slidemap.train.lineage import learnt_ground, lineage
from slidemap.train.loop import train
from slidemap.train.recipes import Recipes
from slidemap.train.selftrain import (
    Target,
    confident,
    load_targets,
    pseudo_labels,
    pseudo_round,
    selftrain,
)
from slidemap.train.warmstart import check_compatible


def l4s_release(root: Path, count: int = 3) -> Path:
    """The Landslide4Sense layout: channel k of every patch holds 10·k + patch number."""
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for n in range(1, count + 1):
        img = np.broadcast_to(10.0 * np.arange(14, dtype=np.float32) + n, (16, 16, 14)).copy()
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 4:9] = 1
        with h5py.File(root / "img" / f"image_{n}.h5", "w") as f:
            f["img"] = img
        with h5py.File(root / "mask" / f"mask_{n}.h5", "w") as f:
            f["mask"] = mask
    return root


def run_config(tmp_path: Path, data: dict, **extra: object) -> Path:
    return write_config(tmp_path / "run.yaml", {"data": data, "model": TINY_NET,
                                                "training": TINY_TRAINING,
                                                "predict": TINY_PREDICT, **extra})


# -- patch sets in run configs --------------------------------------------------------------------
def test_patch_config_trains_and_validates(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=5)
    config = load_config(run_config(tmp_path, {
        "train": [{"patches": str(root), "split": {"count": 3, "seed": 1, "part": "train"}}],
        "val": [{"patches": str(root), "split": {"count": 3, "seed": 1, "part": "rest"}}],
    }, inputs={"image_bands": [1, 2, 3]}))
    assert shared_with_training((config.train_scenes, config.train_patches),
                                (config.val_scenes, config.val_patches), config.inputs) is None
    train_arrays = load_arrays((), config.train_patches, config.inputs)
    val_arrays = load_arrays((), config.val_patches, config.inputs)
    assert len(train_arrays) == 3 and len(val_arrays) == 2
    assert {a.name for a in train_arrays}.isdisjoint(a.name for a in val_arrays)
    # smaller than the 32 px tile: whole
    assert train_arrays[0].x.shape == (3, PATCH_SIZE, PATCH_SIZE)
    model_path = train(config, tmp_path / "run")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_f1" in history[0]
    assert load_model(model_path).inputs == config.inputs


def test_validation_on_training_ground_warns(tmp_path: Path, tiny_scene: dict) -> None:
    """Figures on training ground say nothing of new ground, and select: best would pick the
    epoch on it."""
    root = patch_folder(tmp_path / "site", count=5)
    overlapping = load_config(run_config(tmp_path, {
        "train": [{"patches": str(root)}],
        "val": [{"patches": str(root), "split": {"count": 2, "seed": 1, "part": "rest"}}],
    }, inputs={"image_bands": [1, 2, 3]}))
    shared = shared_with_training((overlapping.train_scenes, overlapping.train_patches),
                                  (overlapping.val_scenes, overlapping.val_patches),
                                  overlapping.inputs)
    assert shared is not None and shared.startswith(f"3 patch(es) of {root}")
    scene = {k: str(v) for k, v in tiny_scene.items()}
    same_scene = load_config(write_config(tmp_path / "scene.yaml", {
        "data": {"train": [scene], "val": [scene]}, "model": TINY_NET,
        "inputs": {"image_bands": [1, 2, 3]}, "training": TINY_TRAINING,
        "predict": TINY_PREDICT}))
    with pytest.warns(SlidemapWarning, match=r"validation data is also training data \(scene "
                      r".*select: best picks the kept epoch"):
        train(same_scene, tmp_path / "run")


def test_split_is_seeded_and_names_pick_patches() -> None:
    names = [f"t{i}" for i in range(36)]
    drawn, others = Split(count=10, seed=0, part="train"), Split(count=10, seed=0, part="rest")
    train_part = select(names, PatchSource("patches", Path("x"), split=drawn))
    rest = select(names, PatchSource("patches", Path("x"), split=others))
    assert len(train_part) == 10 and len(rest) == 26
    assert sorted(train_part + rest) == list(range(36))
    assert train_part == select(names, PatchSource("patches", Path("x"), split=Split(count=10)))
    assert select(names, PatchSource("patches", Path("x"), names=("t5", "t1"))) == [5, 1]
    with pytest.raises(SlidemapError, match="'nope' is not in x"):
        select(names, PatchSource("patches", Path("x"), names=("nope",)))
    with pytest.raises(SlidemapError, match="lower the count"):
        select(names, PatchSource("patches", Path("x"), split=Split(count=36, seed=0, part="rest")))


@pytest.mark.parametrize(("item", "message"), [
    ({"patches": "a", "names": ["x"], "split": {"count": 1}}, "either names or split"),
    ({"patches": "a", "split": {"count": 0}}, r"split.count must be greater than or equal to 1"),
    ({"patches": "a", "split": {"count": 2, "part": "test"}}, "part: train|rest"),
    ({"patches": "a", "bands": ["B2"]}, r"unknown key data.train\[0\].bands"),
    ({"l4s": "a", "bands": ["B99"]}, "unknown Landslide4Sense band"),
    ({"patches": "a", "l4s": "b"}, "not both"),
])
def test_bad_patch_items_are_one_line_errors(item: dict, message: str) -> None:
    with pytest.raises(SlidemapError, match=message):
        parse_config({"data": {"train": [item]}})


# -- Landslide4Sense bands ------------------------------------------------------------------------
def test_l4s_bands_in_a_config_set_the_channels(tmp_path: Path) -> None:
    root = l4s_release(tmp_path / "l4s")
    config = load_config(run_config(tmp_path, {
        "train": [{"l4s": str(root), "bands": ["B8", "b2", "slope"]}],
        "val": [{"l4s": str(root), "names": ["image_3"]}],
    }))
    assert config.inputs == InputSpec(image_bands=(8, 2), dem=False, slope=True)
    arrays = load_arrays((), config.train_patches, config.inputs)
    x = arrays[1].x  # image_2: channel k (0-based) holds 10·k + 2
    np.testing.assert_array_equal(x[:, 0, 0], [72.0, 12.0, 122.0])  # B8, B2, slope
    assert arrays[1].target[4, 4] == 1 and arrays[1].target[0, 0] == 0
    train(config, tmp_path / "run")
    assert load_model(tmp_path / "run" / "model").inputs.channels == ["band8", "band2", "slope"]


def test_one_terrain_switch_keeps_the_l4s_bands(tmp_path: Path) -> None:
    """``--set inputs.slope=false`` drops slope; before, it dropped every default band too and
    trained on B1-B3 without a word."""
    root = l4s_release(tmp_path / "l4s")
    path = run_config(tmp_path, {"train": [{"l4s": str(root)}], "val": [{"l4s": str(root)}]})
    default = load_config(path).inputs
    assert default.dem and default.slope and len(default.image_bands) > 3
    no_slope = load_config(path, ("inputs.slope=false",)).inputs
    assert no_slope == default.model_copy(update={"slope": False})
    named = run_config(tmp_path, {"train": [{"l4s": str(root), "bands": ["B2", "slope"]}],
                                  "val": [{"l4s": str(root), "bands": ["B2", "slope"]}]})
    with pytest.raises(SlidemapError, match="build other channels"):
        load_config(named, ("inputs.slope=false",))


def test_l4s_sets_with_other_bands_are_refused(tmp_path: Path) -> None:
    root = l4s_release(tmp_path / "l4s")
    with pytest.raises(SlidemapError, match="build other channels"):
        parse_config({"data": {"train": [{"l4s": str(root), "bands": ["B2", "B3"]}],
                               "val": [{"l4s": str(root), "bands": ["B2", "B4"]}]}})


def test_colour_jitter_greys_l4s_patches_by_their_real_red_green_and_blue(tmp_path: Path
                                                                         ) -> None:
    """The default bands start B2 (blue), B3 (green), B4 (red): saturation, inversion, hue and
    grayscale took B2 for red and B4 for blue (a pure red pixel greyed to 0.114, not 0.299)."""
    root = l4s_release(tmp_path / "l4s")
    config = parse_config({"data": {"train": [{"l4s": str(root)}]},
                           "training": {"colour_jitter": {"grayscale": 1.0}}})
    assert config.inputs.image_bands == (2, 3, 4, 8) and config.colour_bands == (2, 1, 0)
    recipes = Recipes(config, [], BandStats([0.0] * 6, [1.0] * 6))
    red = np.zeros((6, 2, 2), np.float32)  # B2, B3, B4, B8, dem, slope
    red[2] = red[4] = 1.0
    grey = recipes._jitter(red, np.ones((2, 2), bool), np.random.default_rng(0))
    np.testing.assert_allclose(grey[:3], 0.299, rtol=1e-6)
    np.testing.assert_array_equal(grey[3:], red[3:])  # B8 and the terrain as they were


def test_colour_jitter_of_l4s_bands_without_red_green_and_blue_is_refused(tmp_path: Path
                                                                         ) -> None:
    """B4, B8: saturation was left out in silence (fewer than three bands), and B8, B11, B12
    were turned and greyed as if they were red, green and blue."""
    root = l4s_release(tmp_path / "l4s")
    for bands in (["B4", "B8", "slope"], ["B8", "B11", "B12"]):
        with pytest.raises(SlidemapError, match=r"colour_jitter saturation change the red, "
                                                r"green and blue bands \(B4, B3, B2\)"):
            parse_config({"data": {"train": [{"l4s": str(root), "bands": bands}]},
                          "training": {"colour_jitter": True}})
        config = parse_config({"data": {"train": [{"l4s": str(root), "bands": bands}]},
                               "training": {"colour_jitter": {"brightness": 0.2}}})
        assert config.colour_bands is None


# -- scale promotion ------------------------------------------------------------------------------
def test_scale_promotion_round_trip_in_predict(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=2)
    spec = InputSpec(image_bands=(1, 2, 3))
    model = save_model(tiny_bundle(spec), tmp_path / "m")
    options = PredictOptions(tile=64, overlap=16, batch_size=2, precision="fp32")
    result = api.predict_patches(root, tmp_path / "out", model, options, scale=2.0)
    assert result.scale == 2.0 and result.metrics is not None
    with rasterio.open(tmp_path / "out" / "p1_prob.tif") as ds:
        prob = ds.read(1)
    assert prob.shape == (PATCH_SIZE, PATCH_SIZE)  # back on the patch's own grid
    sample = open_patch_set(root, spec)[1]
    x = promote(stack_channels(sample, spec), 2.0)
    predictor = Predictor([load_model(model)], precision="fp32")
    expected = demote(predict_arrays(predictor, x, np.ones(x.shape[1:], bool), options),
                      (PATCH_SIZE, PATCH_SIZE))
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    with rasterio.open(tmp_path / "out" / "p1_mask.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), (prob >= 0.5).astype(np.uint8))


def test_a_patch_that_fails_leaves_the_set_as_it_was(tmp_path: Path) -> None:
    """The outputs of a patch set appear together: a patch that cannot be read, met after others
    were mapped, leaves neither new files nor a mix of two runs with the old metrics.json."""
    root = patch_folder(tmp_path / "site", count=3)
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "m")
    options = PredictOptions(tile=64, overlap=16, batch_size=2, precision="fp32")
    api.predict_patches(root, tmp_path / "out", model, options)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (root / "images" / "p2.png").write_bytes(b"not a png")
    with pytest.raises(SlidemapError):
        api.predict_patches(root, tmp_path / "out", model, options, scale=2.0, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    with pytest.raises(SlidemapError):
        api.predict_patches(root, tmp_path / "fresh", model, options)
    assert not (tmp_path / "fresh").exists()


def test_a_patch_rerun_leaves_no_report_of_the_earlier_run(tmp_path: Path) -> None:
    """report.html showed the earlier run's metrics.json: replacing the set's files removes it,
    as a scene's rerun does."""
    root = patch_folder(tmp_path / "site", count=2)
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "m")
    options = PredictOptions(tile=64, overlap=16, batch_size=2, precision="fp32")
    api.predict_patches(root, tmp_path / "out", model, options)
    page = api.report(tmp_path / "out").html
    api.predict_patches(root, tmp_path / "out", model, options, scale=2.0, overwrite=True)
    assert not page.exists()


def test_an_l4s_split_without_a_model_is_refused(tmp_path: Path, run_cli) -> None:
    """No shipped model reads Landslide4Sense bands; the RGB + DEM one would read B1-B3 as RGB."""
    root = l4s_release(tmp_path / "l4s", count=1)
    code, err = run_cli("predict", root, "--out", tmp_path / "out")
    assert code == 1 and "Landslide4Sense" in err and "--model" in err, err
    assert not (tmp_path / "out").exists()


def test_predict_l4s_split_with_target_statistics(tmp_path: Path) -> None:
    root = l4s_release(tmp_path / "l4s", count=2)
    spec = InputSpec(image_bands=(2, 3, 4), slope=True, scale=2.0)
    model = save_model(tiny_bundle(spec), tmp_path / "m")
    options = PredictOptions(tile=32, overlap=8, precision="fp32", normalise="scene")
    result = api.predict_patches(root, tmp_path / "out", model, options)
    assert result.scale == 2.0 and result.normalise == "scene"
    assert result.metrics["pixels"] == 2 * 16 * 16
    with rasterio.open(tmp_path / "out" / "image_2_mask.tif") as ds:
        assert ds.shape == (16, 16) and ds.nodata == 255
        assert ds.tags()["SLIDEMAP_PATCHES"] == str(root)  # provenance, as in scene outputs
        assert ds.tags()["SLIDEMAP_OPTIONS"] == ("tile=32 overlap=8 scales=1 tta=no "
                                                 "normalise=scene precision=fp32 "
                                                 "backend=torch scale=2")
        assert ds.colormap(1)[1][:3] == (230, 60, 30) and ds.tags(1)["CLASS_1"] == "landslide"


def test_training_promotes_patches_and_labels(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=1)
    config = load_config(run_config(tmp_path, {"train": [{"patches": str(root)}]},
                                    inputs={"scale": 2.0}))
    (arrays,) = load_arrays((), config.train_patches, config.inputs)
    assert arrays.x.shape == (3, 2 * PATCH_SIZE, 2 * PATCH_SIZE)
    np.testing.assert_array_equal(arrays.target, promote(arrays.labels, 2.0, "mask"))
    np.testing.assert_array_equal(arrays.target[::2, ::2], arrays.labels)


# -- separated normalisation ----------------------------------------------------------------------
def test_scene_statistics_are_those_of_the_scene(tiny_scene: dict, monkeypatch) -> None:
    spec = InputSpec(image_bands=(1, 2, 3), slope=True)
    monkeypatch.setattr("slidemap.infer.separated.STRIP_ROWS", 40)  # several strips
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as scene:
        streamed = scene_stats(scene, spec, factor=1)
        whole = scene.read(Window(0, 0, scene.width, scene.height), spec.image_bands,
                           dem=False, slope=True)
    expected = compute_stats([stack_channels(whole, spec)], [whole["valid"]])
    np.testing.assert_allclose(streamed.mean, expected.mean, rtol=1e-9)
    np.testing.assert_allclose(streamed.std, expected.std, rtol=1e-9)


def test_relief_is_refused_for_patch_sets(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=1)
    with pytest.raises(SlidemapError, match="need georeferenced scenes"):
        open_patch_set(root, InputSpec(image_bands=(1, 2, 3), slope=True, relief_m=100.0))

def test_patch_statistics_are_those_of_all_target_patches(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=3)
    spec = InputSpec(image_bands=(1, 2, 3))
    dataset = open_patch_set(root, spec)
    pixels = np.concatenate([dataset[i]["image"].reshape(3, -1) for i in range(3)], axis=1)
    pixels = pixels.astype(np.float64)
    stats = patch_stats(dataset, spec)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(axis=1), rtol=1e-9)


def test_patch_statistics_at_a_scale_are_those_training_computes(tmp_path: Path) -> None:
    """On its own training set, separated normalisation gives the model's statistics also when
    patches are up-sampled (before, the native grid's were used: 30 % off for a band)."""
    root = patch_folder(tmp_path / "site", count=3)
    config = load_config(run_config(tmp_path, {"train": [{"patches": str(root)}]},
                                    inputs={"scale": 2.0}))
    trained = dataset_scene_stats(load_arrays((), config.train_patches, config.inputs))
    target = patch_stats(open_patch_set(root, config.inputs), config.inputs)
    np.testing.assert_allclose(target.mean, trained.mean, rtol=1e-6)
    np.testing.assert_allclose(target.std, trained.std, rtol=1e-6)


def test_normalise_scene_predicts_with_the_scene_statistics(tiny_scene: dict,
                                                            tmp_path: Path) -> None:
    spec = InputSpec(image_bands=(1, 2, 3), slope=True)
    with Scene(tiny_scene["image"], dem=tiny_scene["dem"]) as scene:
        stats = scene_stats(scene, spec, factor=1)
    model = save_model(tiny_bundle(spec), tmp_path / "m")
    same = save_model(replace(tiny_bundle(spec), mean=stats.mean, std=stats.std), tmp_path / "s")
    maps = []
    for path, normalise in ((model, "scene"), (same, "model")):
        options = PredictOptions(tile=48, overlap=16, precision="fp32", normalise=normalise)
        out = tmp_path / normalise
        result = api.predict(tiny_scene["image"], out, tiny_scene["dem"], path, options)
        with rasterio.open(result.prob) as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)


# -- pseudo-labels --------------------------------------------------------------------------------
def test_pseudo_labels_keep_only_confident_pixels() -> None:
    prob = np.array([0.0, 0.2, 0.3, 0.31, 0.5, 0.69, 0.7, 0.9, 1.0, np.nan, 0.95],
                    dtype=np.float32)
    valid = np.ones(prob.shape, bool)
    valid[-1] = False
    np.testing.assert_array_equal(pseudo_labels(prob, valid, 0.7),
                                  [0, 0, 0, 255, 255, 255, 1, 1, 1, 255, 255])
    assert pseudo_labels(prob, valid, 0.7).dtype == np.uint8


# -- fine-tuning ----------------------------------------------------------------------------------
def test_finetune_loads_weights_and_freezes_the_encoder(tmp_path: Path) -> None:
    root = patch_folder(tmp_path / "site", count=3)
    spec = InputSpec(image_bands=(1, 2, 3))
    start = save_model(tiny_bundle(spec, seed=3), tmp_path / "start")
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(root)}], "val": [{"patches": str(root)}]},
        init=str(start), training={**TINY_TRAINING, "freeze_encoder": True, "epochs": 2}))
    tuned = load_model(train(config, tmp_path / "run"))
    before = load_model(start).model.state_dict()
    after = tuned.model.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and any("running_mean" in k for k in encoder)
    for key in encoder:  # weights and batch-norm statistics alike
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert not torch.equal(after["head.weight"], before["head.weight"])


def test_frozen_epochs_train_the_decoder_first_then_every_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = patch_folder(tmp_path / "site", count=3)
    start = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3)), seed=3), tmp_path / "start")
    trainable: list[set[bool]] = []
    epoch_of = loop._train_epoch

    def spy(model, *args, **kwargs):  # what each epoch may train
        trainable.append({p.requires_grad for p in model.encoder.parameters()})
        return epoch_of(model, *args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", spy)
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(root)}]}, init=str(start),
        training={**TINY_TRAINING, "frozen_epochs": 2, "epochs": 3, "select": "last"}))
    tuned = load_model(train(config, tmp_path / "run")).model.state_dict()
    assert trainable == [{False}, {False}, {True}]
    before = load_model(start).model.state_dict()
    weights = [k for k in before if k.startswith("encoder.") and k.endswith(".weight")]
    assert weights and any(not torch.equal(tuned[k], before[k]) for k in weights)
    scratch = load_config(run_config(tmp_path, {"train": [{"patches": str(root)}]},
                                     training={**TINY_TRAINING, "frozen_epochs": 1, "epochs": 2}))
    with pytest.raises(SlidemapError, match="add init"):
        train(scratch, tmp_path / "scratch")


def test_finetune_cli_writes_before_and_after(tmp_path: Path, run_cli) -> None:
    root = patch_folder(tmp_path / "site", count=3)
    spec = InputSpec(image_bands=(1, 2, 3))
    start = save_model(tiny_bundle(spec), tmp_path / "start")
    config = run_config(tmp_path, {"train": [{"patches": str(root)}],
                                   "val": [{"patches": str(root)}]})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run", "--freeze-encoder")
    assert code == 0, err
    report = yaml.safe_load((tmp_path / "run" / "finetune.json").read_text())
    assert report["freeze_encoder"] is True and report["frozen_epochs"] == 0
    for when in ("before", "after"):
        assert set(report[when]) >= {"f1", "iou", "precision", "recall"}
    assert load_model(tmp_path / "run" / "model").provenance["config"]["init"] == str(start)


def test_finetune_says_when_the_config_reads_the_model_otherwise(tmp_path: Path,
                                                                run_cli) -> None:
    """A model trained at scale 1 fine-tuned with scale 2: before, nothing said the file's
    reading changed and that 'before' was not the starting model as predict runs it."""
    root = patch_folder(tmp_path / "site", count=2)
    start = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "start")
    config = run_config(tmp_path, {"train": [{"patches": str(root)}],
                                   "val": [{"patches": str(root)}]}, inputs={"scale": 2.0})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run")
    assert code == 0, err
    assert "reads the inputs otherwise" in err and "scale 1.0 → 2.0" in err


def test_finetune_on_patches_says_a_resolution_change_affects_only_scenes(tmp_path: Path,
                                                                          run_cli) -> None:
    """A model read at 1 m (as the shipped RGB one) fine-tuned on patches, whose config sets no
    resolution_m (configs/README's example): patches are read at scale alone, so 'before' is the
    map predict makes; the warning said it was not, and not that the new file reads scenes at
    another resolution."""
    root = patch_folder(tmp_path / "site", count=2)
    start = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3), resolution_m=1.0)),
                       tmp_path / "start")
    config = run_config(tmp_path, {"train": [{"patches": str(root)}],
                                   "val": [{"patches": str(root)}]})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run")
    assert code == 0, err
    assert "resolution_m 1.0 → None" in err and "will read scenes otherwise" in err
    assert "'before' is not" not in err


def _finetune_from_a_start_trained_on(image: str, tiny_scene: dict, tmp_path: Path,
                                      run_cli) -> str:
    """finetune's stderr from a tiny start whose record says it trained on ``image``, on two
    patches of another site, validated on the tiny scene."""
    bundle = tiny_bundle(InputSpec(image_bands=(1, 2, 3)))
    bundle.provenance = {"config": {"train": [{"image": image}]}}
    start = save_model(bundle, tmp_path / "start")
    other = patch_folder(tmp_path / "site", count=2)
    config = run_config(tmp_path, {"train": [{"patches": str(other)}],
                                   "val": [{"image": str(tiny_scene["image"]),
                                            "mask": str(tiny_scene["mask"])}]})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run")
    assert code == 0, err
    return err


def test_finetune_says_when_the_start_trained_on_its_validation(tmp_path: Path, tiny_scene,
                                                                run_cli) -> None:
    err = _finetune_from_a_start_trained_on(str(tiny_scene["image"]), tiny_scene, tmp_path,
                                            run_cli)
    assert f"was trained on validation scene {tiny_scene['image']}" in err


def test_finetune_says_when_it_cannot_check_its_validation_was_held_out(
        tmp_path: Path, tiny_scene, run_cli) -> None:
    """A starting model whose training images are not found from here (the shipped models'
    data in a fresh clone, a name recorded relative to another folder) gave no word, though
    the validation scene may be a crop of what it learnt: silence read as held out."""
    err = _finetune_from_a_start_trained_on("elsewhere/region_B_image.tif", tiny_scene,
                                            tmp_path, run_cli)
    assert "cannot check that" in err and "elsewhere/region_B_image.tif" in err
    assert "may not be held out" in err


def georeferenced_patches(scene: dict[str, Path], root: Path) -> Path:
    """A patch folder of one GeoTIFF patch: ``scene``'s image and labels, on its ground."""
    for key, sub in (("image", "images"), ("mask", "masks")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(scene[key], root / sub / "p0.tif")
    return root


def test_finetune_says_when_its_validation_patches_lie_on_ground_the_start_learnt(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    """The held-out check read data.val's scenes alone: validating on georeferenced patches cut
    from the scene the starting model trained on wrote finetune.json's figures without a word."""
    val = georeferenced_patches(tiny_scene, tmp_path / "val")
    trained = tiny_bundle(InputSpec(image_bands=(1, 2, 3)))
    trained.provenance = {"config": {"train": [{"image": str(tiny_scene["image"])}]}}
    start = save_model(trained, tmp_path / "start")
    other = patch_folder(tmp_path / "site", count=2)
    config = run_config(tmp_path, {"train": [{"patches": str(other)}],
                                   "val": [{"patches": str(val)}]})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run")
    assert code == 0, err
    said = " ".join(err.split())
    assert f"on the ground of validation patch {val / 'images' / 'p0.tif'}" in said
    assert "not held out" in said


def test_finetune_says_when_the_start_learnt_patches_of_its_validation_sets(
        tmp_path: Path, run_cli) -> None:
    """The held-out check covered scenes only: validating on the very patches the starting
    model trained on, or chose its epoch on, was taken as held out."""
    root = patch_folder(tmp_path / "site", count=5)
    drawn = {"patches": str(root), "split": {"count": 2, "seed": 0, "part": "train"}}
    other = patch_folder(tmp_path / "other", count=2)

    def finetune_err(recorded: dict, val_part: str, name: str) -> str:
        bundle = tiny_bundle(InputSpec(image_bands=(1, 2, 3)))
        bundle.provenance = {"config": recorded}
        start = save_model(bundle, tmp_path / f"start-{name}")
        val = {**drawn, "split": {**drawn["split"], "part": val_part}}
        config = run_config(tmp_path, {"train": [{"patches": str(other)}], "val": [val]})
        code, err = run_cli("finetune", start, config, "--out", tmp_path / name)
        assert code == 0, err
        return err

    err = finetune_err({"train": [drawn]}, "train", "seen")
    assert f"was trained on 2 patch(es) of validation patch set {root}" in err
    assert "not held out" in err
    err = finetune_err({"train": [drawn]}, "rest", "held-out")
    assert "not held out" not in err and "cannot check" not in err
    err = finetune_err({"train": [{"patches": "elsewhere/site"}]}, "rest", "moved")
    assert ("cannot check that" in err and "the patches of a validation patch set" in err
            and "elsewhere/site it learnt from is not found from here" in err)
    selected = {"train": [{"patches": str(other)}], "val": [drawn],
                "training": {"select": "best"}}
    err = finetune_err(selected, "train", "selected")
    assert ("kept the epoch chosen by validation (data.val) on 2 patch(es) of validation patch "
            f"set {root}") in err


def cropped_scene(scene: dict[str, Path], root: Path, name: str, columns: int,
                  east_m: float = 0.0) -> dict[str, Path]:
    """``scene`` without its first ``columns`` columns, each pixel kept on its ground, the whole
    moved ``east_m`` metres east (0: a crop of the same ground)."""
    layers = {}
    for key in ("image", "dem", "mask"):
        with rasterio.open(scene[key]) as dataset:
            layers[key] = dataset.read()[:, :, columns:]
            transform = dataset.transform
    moved = Affine.translation(east_m, 0) @ transform @ Affine.translation(columns, 0)
    return write_scene(root, name, layers["image"], layers["dem"][0], layers["mask"][0], moved)


def test_finetune_says_when_its_validation_lies_on_ground_the_start_learnt(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    """The check compared file names: validating on a crop of the scene the starting model
    trained on, or on the scene its own data.val chose its epoch on, was taken as held out."""
    trained = tiny_bundle(InputSpec(image_bands=(1, 2, 3)))
    trained.provenance = {"config": {"train": [{"image": str(tiny_scene["image"])}]}}
    start = save_model(trained, tmp_path / "start")
    crop = cropped_scene(tiny_scene, tmp_path / "crop", "crop", 40)
    elsewhere = cropped_scene(tiny_scene, tmp_path / "elsewhere", "elsewhere", 0, east_m=5000.0)
    other = patch_folder(tmp_path / "site", count=2)
    for name, val, learnt in (("crop", crop, True), ("elsewhere", elsewhere, False)):
        config = run_config(tmp_path, {"train": [{"patches": str(other)}],
                                       "val": [{"image": str(val["image"]),
                                                "mask": str(val["mask"])}]})
        code, err = run_cli("finetune", start, config, "--out", tmp_path / name)
        assert code == 0, err
        assert (f"was trained on {tiny_scene['image']}, on the ground of validation scene "
                f"{crop['image']}" in err) == learnt
        assert ("not held out" in err) == learnt
    selected = tiny_bundle(InputSpec(image_bands=(1, 2, 3)))
    selected.provenance = {"config": {"train": [{"image": str(elsewhere["image"])}],
                                      "val": [{"image": str(tiny_scene["image"])}],
                                      "training": {"select": "best"}}}
    chosen = lineage(save_model(selected, tmp_path / "selected"))
    assert "chosen by validation (data.val) on" in str(learnt_ground(chosen, [crop["image"]]))


def test_init_options_compare_with_the_architecture_defaults(tmp_path: Path,
                                                             tiny_scene: dict[str, Path]) -> None:
    """A default given explicitly builds the same network: before, {depth: 4} was refused
    against a model file saved with {} (U-Net's depth is 4 by default)."""
    spec = InputSpec(image_bands=(1, 2, 3), dem=True, slope=True)
    bundle = tiny_bundle(spec, options={})
    raw = tiny_run(tiny_scene)
    for options in ({}, {"depth": 4}):
        check_compatible(bundle, parse_config({**raw, "model": {"name": "unet", "width": 4,
                                                                "options": options}}))
    with pytest.raises(SlidemapError, match="depth"):
        check_compatible(bundle, parse_config({**raw, "model": {"name": "unet", "width": 4,
                                                                "options": {"depth": 3}}}))


def test_finetune_refuses_another_architecture(tmp_path: Path, run_cli) -> None:
    root = patch_folder(tmp_path / "site", count=2)
    start = save_model(tiny_bundle(InputSpec(image_bands=(1, 2))), tmp_path / "two_bands")
    config = run_config(tmp_path, {"train": [{"patches": str(root)}],
                                   "val": [{"patches": str(root)}]})
    code, err = run_cli("finetune", start, config, "--out", tmp_path / "run")
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "two_bands.safetensors reads channels" in err


# -- self-training --------------------------------------------------------------------------------
def test_selftrain_two_rounds_writes_rounds(tmp_path: Path, run_cli) -> None:
    source = patch_folder(tmp_path / "source", count=3, seed=0)
    target = patch_folder(tmp_path / "target", count=2, seed=1)
    config = run_config(tmp_path, {"train": [{"patches": str(source)}]},
                        selftrain={"target": [{"patches": str(target)}], "rounds": 2,
                                   "threshold": 0.6, "loss": {"soft_ce": 1, "dice": 1}})
    code, err = run_cli("selftrain", config, "--out", tmp_path / "st")
    assert code == 0, err
    lines = (tmp_path / "st" / "rounds.csv").read_text().splitlines()
    assert lines[0].startswith("round,kept_fraction,pseudo_landslide_fraction,target_f1")
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]
    assert "| round |" in (tmp_path / "st" / "rounds.md").read_text()
    model = load_model(tmp_path / "st" / "model")
    assert [r["round"] for r in model.provenance["selftrain"]] == [0, 1, 2]
    assert load_model(tmp_path / "st" / "round2" / "model").provenance["config"]["loss"] == {
        "soft_ce": 1, "dice": 1}
    # The rounds' models and the result saw the target's imagery, and say so.
    for model_path in (tmp_path / "st" / "model", tmp_path / "st" / "round1" / "model"):
        assert any(str(target) in what for what in lineage(model_path).unknown)
    assert not any(str(target) in what for what in
                   lineage(tmp_path / "st" / "round0" / "model").unknown)


def test_selftrain_refuses_a_bad_round_loss_before_round_0(tmp_path: Path, run_cli) -> None:
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    config = run_config(tmp_path, {"train": [{"patches": str(source)}]},
                        selftrain={"target": [{"patches": str(source)}], "rounds": 1,
                                   "loss": {"soft_ce": {"smoothing": 2}}})
    code, err = run_cli("selftrain", config, "--out", tmp_path / "st")
    assert code == 1 and "selftrain" in err and "smoothing" in err, err
    assert not (tmp_path / "st" / "round0").exists()


def test_selftrain_keeps_a_model_in_out_and_its_starting_model(tmp_path: Path, run_cli) -> None:
    """The result's model file was saved over whatever OUT/model.safetensors was: a model the
    user kept there without --overwrite, and with it the run's own starting model (init)."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    out = tmp_path / "st"
    kept = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), out / "model")
    before = kept.read_bytes()
    plain = run_config(tmp_path, {"train": [{"patches": str(source)}]},
                       selftrain={"target": [{"patches": str(source)}], "rounds": 1})
    code, err = run_cli("selftrain", plain, "--out", out)
    assert code == 1 and f"output {out / 'model.safetensors'} exists" in err, err
    assert kept.read_bytes() == before and not (out / "round0").exists()
    from_kept = run_config(tmp_path, {"train": [{"patches": str(source)}]}, init=str(kept),
                           selftrain={"target": [{"patches": str(source)}], "rounds": 1})
    code, err = run_cli("selftrain", from_kept, "--out", out, "--overwrite")
    assert code == 1 and "would overwrite an input" in err, err
    assert kept.read_bytes() == before and not (out / "round0").exists()


def test_a_stopped_selftrain_says_how_to_go_on_in_its_own_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C or SIGTERM in a self-training round said "rerun the same command with --resume",
    an option selftrain does not have (and the rerun without it is refused): it now says that
    selftrain starts again with --overwrite."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(source)}]},
        selftrain={"target": [{"patches": str(source)}], "rounds": 1},
        training={**TINY_TRAINING, "epochs": 2}))
    interrupt_at_epoch_2(monkeypatch)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        selftrain(config, tmp_path / "st")
    assert "stopped after epoch 1" in caplog.text
    assert "--resume" not in caplog.text and "rerun it with --overwrite" in caplog.text


def test_selftrain_rows_have_no_target_figures_without_labels(tmp_path: Path) -> None:
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    target = patch_folder(tmp_path / "target", count=2, seed=1, masks=False)
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(source)}]},
        selftrain={"target": [{"patches": str(target)}], "rounds": 1, "epochs": 1}))
    rows = selftrain(config, tmp_path / "st")
    assert len(rows) == 2 and "target_f1" not in rows[0]
    assert 0.0 <= rows[1]["kept_fraction"] <= 1.0


def test_a_selftrain_target_patch_set_stays_one_domain(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets and their pseudo-labels lost their patch set, so with training.domain_batches
    every target patch was a domain of its own (batches of one patch's windows)."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    target = patch_folder(tmp_path / "target", count=3, seed=1, masks=False)
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(source)}]},
        selftrain={"target": [{"patches": str(target)}], "rounds": 1}))
    targets = load_targets(config)
    monkeypatch.setattr(selftrain_module, "predict_arrays",
                        lambda _, x, *__: np.full(x.shape[1:], 0.9, np.float32))
    predictor = Predictor([tiny_bundle(InputSpec(image_bands=(1, 2, 3)))], precision="fp32")
    pseudo, _ = pseudo_round(predictor, targets, confident(0.7), PredictOptions())
    assert [t.arrays.domain for t in targets] == [str(target)] * 3
    assert [p.domain for p in pseudo] == [str(target)] * 3


def test_a_south_up_target_gets_the_pseudo_labels_of_its_ground_north_up(
        tmp_path: Path, tiny_scene: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target scene stored south up and east to west is predicted north up, as ``slidemap
    predict`` maps it: its pseudo-labels come from the probabilities of the same ground stored
    north up. It was predicted as stored, upside down: other probabilities, so other labels
    (and target F1) for the ground."""
    north, mirrored = ({k: str(v) for k, v in scene.items()} for scene in
                       (tiny_scene, mirrored_scene(tiny_scene, tmp_path / "mirrored",
                                                   (True, True))))
    config = load_config(run_config(
        tmp_path, {"train": [north]}, inputs={"image_bands": [1, 2, 3], "slope": True},
        selftrain={"target": [north, mirrored], "rounds": 1}))
    predictor = Predictor([tiny_bundle(mean=[60.0] * 3 + [10.0], std=[30.0] * 3 + [5.0])],
                          precision="fp32")
    probs: list[np.ndarray] = []

    def spy(predictor: Predictor, x: np.ndarray, valid: np.ndarray, options: PredictOptions,
            flips: tuple[bool, bool] = (False, False)) -> np.ndarray:
        probs.append(predict_arrays(predictor, x, valid, options, flips))
        return probs[-1]

    monkeypatch.setattr(selftrain_module, "predict_arrays", spy)
    options = PredictOptions(tile=40, overlap=8)  # windows at 0, 32, 56
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlidemapWarning)  # the untrained model's one class
        rows = [pseudo_round(predictor, [target], confident(0.5), options)[1]
                for target in load_targets(config)]
    np.testing.assert_allclose(probs[1][::-1, ::-1], probs[0], atol=1e-6)
    assert rows[1] == pytest.approx(rows[0], abs=1e-9)


def test_selftrain_warns_when_a_round_keeps_no_target_pixel(tmp_path: Path) -> None:
    """Before, a round whose model was sure of nothing trained the next on the source alone and
    only rounds.md's 0.0 % said so."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    target = patch_folder(tmp_path / "target", count=2, seed=1, masks=False)
    config = load_config(run_config(
        tmp_path, {"train": [{"patches": str(source)}]},
        selftrain={"target": [{"patches": str(target)}], "rounds": 1, "epochs": 1,
                   "threshold": 1.0}))
    with pytest.warns(SlidemapWarning, match="round 0's model is sure of no target pixel"):
        rows = selftrain(config, tmp_path / "st")
    assert rows[0]["kept_fraction"] == 0.0


def test_predict_folder_cli_refuses_scene_options(tmp_path: Path, tiny_model: Path,
                                                  run_cli) -> None:
    root = patch_folder(tmp_path / "site", count=1)
    code, err = run_cli("predict", root, "--out", tmp_path / "o", "--dem", root / "x.tif",
                        "--model", tiny_model)
    assert code == 2 and "read as patches: --dem and --report apply" in err
    code, err = run_cli("predict", root, "--out", tmp_path / "o", "--model", tiny_model)
    assert code == 1 and "needs a DEM" in err and str(root) in err  # RGB + slope model


def test_band_statistics_fit_the_predictor(tiny_model: Path) -> None:
    predictor = Predictor([load_model(tiny_model)])
    with pytest.raises(SlidemapError, match="do not fit the model's 4 channels"):
        predictor.with_stats(BandStats([0.0], [1.0]))


def test_pseudo_labels_of_one_class_alone_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that calls all the ground it is sure of landslide gave pseudo-labels of that
    class alone, and a round (selftrain, predict --adapt) trained on them in silence: the
    drift towards landslide that the adaptation measurement found. It now warns; labels of
    both classes, or of background alone (a scene without slides), do not."""
    x = np.zeros((3, 8, 8), np.float32)
    target = Target(SceneArrays("t", x, np.zeros((8, 8), np.uint8)), None)
    predictor = Predictor([tiny_bundle(InputSpec(image_bands=(1, 2, 3)))], precision="fp32")
    for prob, warns in ((0.9, True), (0.1, False)):
        monkeypatch.setattr(selftrain_module, "predict_arrays",
                            lambda *_, p=prob: np.full((8, 8), p, np.float32))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, row = pseudo_round(predictor, [target], confident(0.7), PredictOptions())
        said = [str(w.message) for w in caught if w.category is SlidemapWarning]
        assert row["kept_fraction"] == 1.0
        assert bool(said) is warns and all("every pseudo-label is landslide" in s for s in said)


def test_selftrain_leaves_a_round_folder_it_did_not_write(tmp_path: Path, run_cli) -> None:
    """A folder ``round3`` in --out that no self-training run wrote (here holding the target
    imagery) was deleted at the end of a one-round run, even without --overwrite."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    out = tmp_path / "st"
    target = patch_folder(out / "round3" / "target", count=2, seed=1)
    before = {p: p.read_bytes() for p in target.rglob("*.png")}
    config = run_config(tmp_path, {"train": [{"patches": str(source)}]},
                        selftrain={"target": [{"patches": str(target)}], "rounds": 1})
    code, err = run_cli("selftrain", config, "--out", out)
    assert code == 0, err
    assert {p: p.read_bytes() for p in target.rglob("*.png")} == before


def test_selftrain_overwrite_never_removes_a_round_holding_its_init(
        tmp_path: Path, run_cli) -> None:
    """--overwrite of a three-round run with a one-round run removes round2 and round3: the
    init kept in round3 (go on from the earlier run's last model) was deleted with it."""
    source = patch_folder(tmp_path / "source", count=2, seed=0)
    out = tmp_path / "st"
    (out / "round0").mkdir(parents=True)
    (out / "rounds.csv").write_text("round\n0\n")
    init = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), out / "round3" / "model")
    before = init.read_bytes()
    config = run_config(tmp_path, {"train": [{"patches": str(source)}]}, init=str(init),
                        selftrain={"target": [{"patches": str(source)}], "rounds": 1})
    code, err = run_cli("selftrain", config, "--out", out, "--overwrite")
    assert code == 1 and f"{out / 'round3'} (a round of the earlier" in err, err
    assert init.read_bytes() == before and len(err.strip().splitlines()) == 1
