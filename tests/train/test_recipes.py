"""Training recipes: mixup, colour jitter, random zoom, hard-example and landslide windows, and
determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from factories import (
    TINY_PREDICT,
    patch_folder,
    run_config,
    tiny_run,
    train_interrupted,
    train_interrupted_then_resumed,
    write_scene,
)
from safetensors.torch import load_file

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import RandomWindows, SceneArrays, load_scene_arrays, scene_stats
from slidemap.data.hard_examples import error_map, hard_windows
from slidemap.data.normalization import BandStats
from slidemap.data.photometric import random_scale
from slidemap.data.sources import load_arrays
from slidemap.data.windows import windows_around
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.models import build_model
from slidemap.schema.config import PatchSource, RunConfig, parse_config
from slidemap.train.loop import train
from slidemap.train.recipes import Recipes, build_recipes
from slidemap.train.runfolder import check_same_run, run_identity

OPTICAL = 3


def windows_for(config: RunConfig) -> RandomWindows:
    source = config.train_scenes[0]
    scenes = [load_scene_arrays(source.image, source.mask, source.dem, config.inputs)]
    stats = scene_stats(scenes)
    s = config.train
    return RandomWindows(scenes, stats, s.tile, s.windows_per_epoch, s.min_valid, s.augment,
                         s.seed, build_recipes(config, scenes, stats))


def first_batch(scene: dict[str, Path], **training: object) -> dict[str, np.ndarray]:
    windows = windows_for(parse_config(tiny_run(scene, **training)))
    return next(iter(windows.epoch(1, 4)))


def test_all_recipes_off_by_default(tiny_scene: dict[str, Path]) -> None:
    windows = windows_for(parse_config(tiny_run(tiny_scene)))
    assert windows.recipes is None


@pytest.mark.parametrize("training", [{"mixup": -0.1}, {"hard_examples": 1.5},
                                      {"landslide_windows": 1.5},
                                      {"hard_examples": 0.6, "landslide_windows": 0.6},
                                      {"random_scale": [1.2, 0.8]}, {"random_scale": [1.0]},
                                      {"colour_jitter": "yes"},
                                      {"colour_jitter": {"brightness": 1.5}},
                                      {"colour_jitter": {"tint": 0.1}},
                                      {"colour_jitter": {"hue": 0.6}},
                                      {"colour_jitter": {"grayscale": 1.5}},
                                      {"colour_jitter": {"invert": 2}},
                                      {"weights_dtype": "int2"}, {"zoom_context": True},
                                      {"frozen_epochs": 50},
                                      {"frozen_epochs": 1, "epochs": 3, "freeze_encoder": True},
                                      {"domain_batches": True, "landslide_windows": 0.3},
                                      {"domain_batches": True, "hard_examples": 0.3}])
def test_bad_recipe_settings_are_refused(tiny_scene: dict[str, Path], training: dict) -> None:
    with pytest.raises(SlidemapError, match=next(iter(training))):
        parse_config(tiny_run(tiny_scene, **training))


def test_mixup_blends_pairs_into_soft_targets(tiny_scene: dict[str, Path]) -> None:
    plain = first_batch(tiny_scene)
    mixed = first_batch(tiny_scene, mixup=1.0)
    soft = mixed["target"][(mixed["target"] > 0) & (mixed["target"] < 1)]
    assert soft.size > 0
    assert not np.array_equal(mixed["x"], plain["x"])
    # A pixel stays valid only where both partners are: never valid where the sample itself isn't.
    assert not (mixed["valid"] & ~plain["valid"]).any()
    # Every mixed tile is λ·own + (1-λ)·partner for some partner in the batch.
    for i in range(len(plain["x"])):
        residuals = []
        for j in range(len(plain["x"])):
            a, b = plain["x"][i].ravel(), plain["x"][j].ravel()
            lam = np.dot(mixed["x"][i].ravel() - b, a - b) / max(np.dot(a - b, a - b), 1e-12)
            residuals.append(np.abs(lam * a + (1 - lam) * b - mixed["x"][i].ravel()).max())
        assert min(residuals) < 1e-4


def test_colour_jitter_changes_only_optical_channels(tiny_scene: dict[str, Path]) -> None:
    plain = first_batch(tiny_scene, augment=False)
    jittered = first_batch(tiny_scene, augment=False, colour_jitter=True)
    valid = plain["valid"][:, 0]
    np.testing.assert_array_equal(jittered["x"][:, OPTICAL:], plain["x"][:, OPTICAL:])
    np.testing.assert_array_equal(jittered["target"], plain["target"])
    np.testing.assert_array_equal(jittered["valid"], plain["valid"])
    optical_change = np.abs(jittered["x"][:, :OPTICAL] - plain["x"][:, :OPTICAL])
    assert optical_change.transpose(1, 0, 2, 3)[:, valid].mean() > 1e-3
    assert (jittered["x"][:, :OPTICAL].transpose(1, 0, 2, 3)[:, ~valid] == 0).all()


def test_colour_jitter_keeps_the_context_pseudo_labels_leave_out(tiny_scene: dict[str, Path]
                                                                 ) -> None:
    """Uncertain ground that pseudo-labels leave out (``inputs_valid``) is context, jittered like
    the rest; before, jitter set it to 0. Ground without data stays 0."""
    config = parse_config(tiny_run(tiny_scene, augment=False, colour_jitter=True, tile=96,
                                   min_valid=0.1))
    source = config.train_scenes[0]
    scene = load_scene_arrays(source.image, source.mask, source.dem, config.inputs)
    uncertain = np.zeros(scene.target.shape, bool)
    uncertain[:, 8:48] = True
    pseudo = SceneArrays(scene.name, scene.x, np.where(uncertain, 255, scene.target)
                         .astype(np.uint8), inputs_valid=scene.imagery)
    stats = scene_stats([pseudo])
    windows = RandomWindows([pseudo], stats, 96, 1, 0.1, False, 0,
                            build_recipes(config, [pseudo], stats))
    optical = next(iter(windows.epoch(1, 1)))["x"][0, :OPTICAL]
    assert (optical[:, :, :8] == 0).all()
    assert (np.abs(optical[:, :, 8:48]) > 0).mean() > 0.99  # unlabelled, yet read


def test_colour_jitter_strengths_are_used(tiny_scene: dict[str, Path]) -> None:
    plain = first_batch(tiny_scene, augment=False)
    off = first_batch(tiny_scene, augment=False,
                      colour_jitter={"brightness": 0, "contrast": 0, "saturation": 0})
    mild = first_batch(tiny_scene, augment=False, colour_jitter={"brightness": 0.05})
    strong = first_batch(tiny_scene, augment=False, colour_jitter={"brightness": 0.8})
    valid = plain["valid"][:, 0]

    def change(batch: dict) -> float:
        diff = np.abs(batch["x"][:, :OPTICAL] - plain["x"][:, :OPTICAL])
        return float(diff.transpose(1, 0, 2, 3)[:, valid].mean())

    assert change(off) < 1e-5
    assert change(strong) > 3 * change(mild) > 0


def test_random_scale_zooms_every_channel_and_the_labels(tiny_scene: dict[str, Path]) -> None:
    plain = first_batch(tiny_scene, augment=False)
    zoomed = first_batch(tiny_scene, augment=False, random_scale=[2.0, 2.0])
    rng = np.random.default_rng(0)  # a fixed factor needs no particular draw
    for i in range(len(plain["x"])):
        labels = np.where(plain["valid"][i], plain["target"][i], 255).astype(np.uint8)
        want = random_scale({"image": plain["x"][i], "mask": labels}, rng, (2.0, 2.0))
        np.testing.assert_allclose(zoomed["x"][i], want["image"], atol=1e-6)
        np.testing.assert_array_equal(zoomed["valid"][i], want["mask"] != 255)
        np.testing.assert_array_equal(zoomed["target"][i], (want["mask"] == 1).astype(np.float32))
    shrunk = first_batch(tiny_scene, augment=False, random_scale=[0.5, 0.5])
    # Zooming out leaves an uncovered border: ignored in the labels, 0 in every channel.
    assert not shrunk["valid"][:, :, :4].any()
    assert (shrunk["x"][:, :, :4] == 0).all()


def halved_source(tile: np.ndarray, scene: np.ndarray) -> tuple[int, int] | None:
    """Row and column of the window of ``scene``, twice the tile's side, whose 2 × 2 block means
    are ``tile``; None if there is none."""
    side = 2 * tile.shape[-1]
    for row in range(scene.shape[-2] - side + 1):
        for col in range(scene.shape[-1] - side + 1):
            block = scene[:, row:row + side, col:col + side]
            if np.allclose(tile, block.reshape(len(block), side // 2, 2, side // 2, 2)
                           .mean(axis=(2, 4)), atol=1e-5):
                return row, col
    return None


def test_zoom_context_reads_wider_ground_instead_of_a_border(tiny_scene: dict[str, Path]) -> None:
    config = parse_config(tiny_run(tiny_scene, augment=False, random_scale=[0.5, 0.5],
                                   zoom_context=True))
    windows = windows_for(config)
    batch = next(iter(windows.epoch(1, 4)))
    assert batch["x"].shape[-2:] == (32, 32)
    # Each tile is a 64 px window of the scene halved, with that window's labels: real ground to
    # the tile's edge where the scene has it, never the padded border of a plain zoom-out.
    labels = windows.scenes[0].target
    for x, valid in zip(batch["x"], batch["valid"][:, 0], strict=True):
        source = halved_source(x, windows.inputs[0])
        assert source is not None
        row, col = source
        np.testing.assert_array_equal(valid, labels[row + 1:row + 64:2, col + 1:col + 64:2] != 255)
        assert valid[:, -4:].any()  # the right edge is real ground (the nodata is on the left)


def test_error_map_is_soft_error_on_labelled_pixels() -> None:
    prob = np.array([[0.9, 0.2, 0.7]], dtype=np.float32)
    target = np.array([[1, 1, 255]], dtype=np.uint8)
    np.testing.assert_allclose(error_map(prob, target), [[0.1, 0.8, 0.0]], atol=1e-6)


def test_hard_windows_follow_the_error_map() -> None:
    valid = np.ones((64, 64), dtype=bool)
    error = np.full((64, 64), 0.001, dtype=np.float32)
    error[:16, :16] = 1.0
    picks = hard_windows([valid], [error], 16, 500, 0.25, np.random.default_rng(0))
    assert len(picks) == 500
    hits = np.mean([w.row_off < 16 and w.col_off < 16 for _, w in picks])
    # Uniform windows would touch the hot corner ~11 % of the time.
    assert hits > 0.9
    again = hard_windows([valid], [error], 16, 500, 0.25, np.random.default_rng(0))
    assert again == picks


def test_hard_windows_skip_right_scenes_and_invalid_ground() -> None:
    valid = np.ones((64, 64), dtype=bool)
    valid[:, :32] = False
    error = np.ones((64, 64), dtype=np.float32)
    picks = hard_windows([valid, valid], [error, np.zeros_like(error)], 16, 200, 1.0,
                         np.random.default_rng(1))
    assert {index for index, _ in picks} == {0}
    assert all(w.col_off >= 32 for _, w in picks)
    assert hard_windows([valid], [np.zeros_like(error)], 16, 5, 0.25,
                        np.random.default_rng(0)) == []


def test_windows_around_hold_a_pixel_and_enough_valid_ground() -> None:
    valid = np.ones((64, 64), dtype=bool)
    valid[:, :24] = False
    landslide = np.zeros((64, 64), dtype=bool)
    landslide[40:42, 40:42] = True
    pixels = np.flatnonzero(landslide)
    picks = windows_around(pixels, valid, 16, 300, 0.75, np.random.default_rng(0))
    assert len(picks) == 300
    for w in picks:
        rows, cols = slice(w.row_off, w.row_off + 16), slice(w.col_off, w.col_off + 16)
        assert landslide[rows, cols].any() and valid[rows, cols].mean() >= 0.75
    assert len({(w.row_off, w.col_off) for w in picks}) > 50  # anywhere around it, not centred
    assert windows_around(pixels, valid, 16, 300, 0.75, np.random.default_rng(0)) == picks
    # A pixel in the corner: windows are clipped to the grid.
    corner = windows_around(np.array([64 * 64 - 1]), valid, 16, 5, 0.75, np.random.default_rng(0))
    assert {(w.row_off, w.col_off) for w in corner} == {(48, 48)}
    # Too little valid ground around the pixels, or no pixel: fewer windows, or none.
    assert windows_around(np.array([0]), valid, 16, 5, 0.75, np.random.default_rng(0)) == []
    assert windows_around(np.array([], dtype=np.int64), valid, 16, 5, 0.75,
                          np.random.default_rng(0)) == []


def test_landslide_windows_go_to_the_scenes_that_hold_landslides(
        tiny_scene: dict[str, Path]) -> None:
    config = parse_config(tiny_run(tiny_scene, landslide_windows=0.5, augment=False))
    scene = windows_for(config).scenes[0]
    bare = SceneArrays("bare", scene.x, np.where(scene.target == 1, 0, scene.target)
                       .astype(np.uint8))
    recipes = Recipes(config, [bare, scene], scene_stats([bare, scene]))
    picks = recipes.steered_windows(np.random.default_rng(0))
    assert len(picks) == 4  # half of 8 windows
    for index, w in picks:
        assert index == 1
        window = scene.target[w.row_off:w.row_off + 32, w.col_off:w.col_off + 32]
        assert (window == 1).any()
    # Off, it draws nothing from the epoch's generator: runs without it are drawn as before.
    off = Recipes(parse_config(tiny_run(tiny_scene, mixup=0.4)), [scene], scene_stats([scene]))
    rng = np.random.default_rng(0)
    assert off.steered_windows(rng) == []
    assert rng.random() == np.random.default_rng(0).random()


def domain_items() -> list[SceneArrays]:
    """Items of three domains, each item's channels holding its domain's number: two patches of
    source "a", one of "b", and a scene "c" (a domain of its own)."""
    rng = np.random.default_rng(0)
    items = []
    for name, source, value in [("p0", "a", 1.0), ("p1", "a", 1.0), ("q0", "b", 2.0),
                                ("c", "", 3.0)]:
        target = (rng.random((48, 48)) > 0.5).astype(np.uint8)
        items.append(SceneArrays(name, np.full((OPTICAL, 48, 48), value, np.float32), target,
                                 source=source))
    return items


def batch_domains(windows: RandomWindows, epoch: int) -> list[set[float]]:
    """The domain numbers each batch of ``epoch`` holds."""
    return [set(np.unique(batch["x"][:, 0]).tolist()) for batch in windows.epoch(epoch, 4)]


def test_domain_batches_draw_every_batch_from_one_domain() -> None:
    items = domain_items()
    stats = BandStats([0.0] * OPTICAL, [1.0] * OPTICAL)  # x keeps the domain's number
    windows = RandomWindows(items, stats, 16, 30, 0.5, True, 0, domain_batches=True)
    drawn = [batch_domains(windows, epoch) for epoch in range(1, 6)]
    assert all(len(batches) == 8 for batches in drawn)  # 30 windows in batches of 4
    assert all(len(domains) == 1 for batches in drawn for domains in batches)
    assert set().union(*(d for batches in drawn for d in batches)) == {1.0, 2.0, 3.0}
    sizes = [len(b["x"]) for b in windows.epoch(1, 4)]
    assert sizes == [4] * 7 + [2]
    # Off, the same items are mixed within batches.
    mixed = RandomWindows(items, stats, 16, 30, 0.5, True, 0)
    assert any(len(domains) > 1 for domains in batch_domains(mixed, 1))


def test_a_domain_without_a_window_to_draw_is_left_out_not_a_failed_epoch() -> None:
    """A scene labelled on a strip narrower than min_valid allows was drawn by its labelled
    pixels and its empty batch stopped training at epoch 7 of this draw."""
    thin = np.full((64, 64), 255, np.uint8)
    thin[:, :4] = 0
    items = [SceneArrays("wide", np.full((OPTICAL, 64, 64), 1.0, np.float32),
                         np.zeros((64, 64), np.uint8)),
             SceneArrays("thin", np.full((OPTICAL, 64, 64), 2.0, np.float32), thin)]
    stats = BandStats([0.0] * OPTICAL, [1.0] * OPTICAL)
    with pytest.warns(SlidemapWarning, match="thin has no window of 16 px"):
        windows = RandomWindows(items, stats, 16, 40, 0.5, False, 0, domain_batches=True)
    sizes = [[len(b["x"]) for b in windows.epoch(epoch, 8)] for epoch in range(1, 31)]
    assert sizes == [[8] * 5] * 30
    with pytest.warns(SlidemapWarning), pytest.raises(SlidemapError, match="no training window"):
        next(RandomWindows(items[1:], stats, 16, 40, 0.5, False, 0,
                           domain_batches=True).epoch(1, 8))


def test_every_epoch_draws_its_windows_when_a_scene_has_none_to_give() -> None:
    """A scene labelled too sparsely for any window (a pseudo-labelled target's scattered
    confident pixels) kept its share of the epoch's windows, which drew nothing: epochs ran 24
    to 32 of 40 windows, short of the steps the one-cycle schedule counts on."""
    sparse = np.full((64, 64), 255, np.uint8)
    sparse[::5] = 0  # a fifth of every window labelled, under min_valid
    items = [SceneArrays("wide", np.full((OPTICAL, 64, 64), 1.0, np.float32),
                         np.zeros((64, 64), np.uint8)),
             SceneArrays("sparse", np.full((OPTICAL, 64, 64), 2.0, np.float32), sparse)]
    stats = BandStats([0.0] * OPTICAL, [1.0] * OPTICAL)
    with pytest.warns(SlidemapWarning, match="sparse: no window of 16 px has 50%"):
        windows = RandomWindows(items, stats, 16, 40, 0.5, False, 0)
    sizes = [[len(b["x"]) for b in windows.epoch(epoch, 8)] for epoch in range(1, 11)]
    assert sizes == [[8] * 5] * 10


def test_a_patch_set_is_one_domain(tmp_path: Path) -> None:
    first, second = patch_folder(tmp_path / "first"), patch_folder(tmp_path / "second", seed=1)
    spec = InputSpec(image_bands=(1, 2, 3))
    arrays = load_arrays([], [PatchSource("patches", first), PatchSource("patches", second)],
                         spec)
    assert [a.domain for a in arrays] == [str(first)] * 4 + [str(second)] * 4


def test_scenes_of_one_name_in_two_folders_are_two_domains(tmp_path: Path) -> None:
    """Scenes were keyed by their stem: 2019/ortho.tif and 2021/ortho.tif were one domain."""
    rng = np.random.default_rng(0)
    spec = InputSpec(image_bands=(1, 2, 3))
    domains = []
    for year in ("2019", "2021"):
        image = rng.integers(30, 90, (3, 24, 24)).astype(np.uint8)
        dsm = np.full((24, 24), 3000.0, np.float32)
        scene = write_scene(tmp_path / year, "ortho", image, dsm, np.zeros((24, 24), np.uint8))
        arrays = load_scene_arrays(scene["image"], scene["mask"], None, spec)
        assert arrays.name == "ortho"
        domains.append(arrays.domain)
    assert domains[0] != domains[1]
    again = load_scene_arrays(tmp_path / "2019" / "ortho.tif", tmp_path / "2019" / "ortho_mask.tif",
                              None, spec)
    assert again.domain == domains[0]  # a scene listed twice is one domain


def test_training_on_domain_batches_is_deterministic(tmp_path: Path) -> None:
    sets = [{"patches": str(patch_folder(tmp_path / name, seed=seed))}
            for seed, name in enumerate(("first", "second"))]
    config = parse_config(run_config(
        sets, sets, name="domains", inputs={"image_bands": [1, 2, 3]},
        training={"epochs": 2, "batch_size": 2, "tile": 16, "windows_per_epoch": 6,
                  "precision": "fp32", "seed": 0, "domain_batches": True},
        predict=TINY_PREDICT))
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    assert len(history_losses(tmp_path / "a")) == 2
    assert history_losses(tmp_path / "a") == history_losses(tmp_path / "b")


def test_hard_examples_replace_part_of_the_uniform_windows(tiny_scene: dict[str, Path]) -> None:
    config = parse_config(tiny_run(tiny_scene, hard_examples=0.5, augment=False))
    windows = windows_for(config)
    recipes = windows.recipes
    assert isinstance(recipes, Recipes)
    model = build_model("unet", 5, 4, depth=2)
    recipes.start_epoch(model, 1)
    assert recipes.error_maps is None  # nothing learned yet: epoch 1 is uniform
    recipes.start_epoch(model, 2)
    scene = windows.scenes[0]
    assert recipes.error_maps[0].shape == scene.target.shape
    assert (recipes.error_maps[0][~scene.valid] == 0).all()

    hot = np.zeros(scene.target.shape, dtype=np.float32)
    hot[64:, 64:] = 1.0
    recipes.error_maps = [hot]
    hard = recipes.steered_windows(np.random.default_rng(0))
    assert len(hard) == 4  # half of 8 windows
    assert all(w.row_off + 32 > 64 and w.col_off + 32 > 64 for _, w in hard)
    batches = list(windows.epoch(2, 4))
    assert sum(len(b["x"]) for b in batches) == 8


def test_steered_windows_that_round_up_together_still_fit_the_epoch(
        tiny_scene: dict[str, Path]) -> None:
    """hard_examples 0.3 and landslide_windows 0.7 of 5 windows rounded to 2 + 4 = 6: epoch 2
    (the first with error maps) failed with numpy's 'n < 0' after epoch 1 had trained."""
    config = parse_config(tiny_run(tiny_scene, windows_per_epoch=5, hard_examples=0.3,
                                   landslide_windows=0.7))
    windows = windows_for(config)
    assert isinstance(windows.recipes, Recipes)
    windows.recipes.start_epoch(build_model("unet", 5, 4, depth=2), 2)
    assert [len(b["x"]) for b in windows.epoch(2, 4)] == [4, 1]


ALL_RECIPES = {"mixup": 0.4, "colour_jitter": True, "random_scale": [0.8, 1.25],
               "hard_examples": 0.5, "landslide_windows": 0.25}


def history_losses(run: Path) -> list[str]:
    with (run / "history.csv").open() as handle:
        return [row["train_loss"] for row in csv.DictReader(handle)]


def test_runs_with_recipes_are_deterministic_and_resumable(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(tiny_run(tiny_scene, **ALL_RECIPES))
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    train_interrupted_then_resumed(config, tmp_path / "c", monkeypatch)

    weights = [load_file(str(tmp_path / run / "model.safetensors")) for run in "abc"]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        for key, value in weights[0].items():
            assert (other[key] == value).all(), key
    assert history_losses(tmp_path / "a") == history_losses(tmp_path / "b") \
        == history_losses(tmp_path / "c")


def test_finetune_freeze_flag_and_frozen_epochs_are_refused_together(tiny_scene: dict) -> None:
    """--freeze-encoder goes through changed(), which checks like the file does."""
    config = parse_config(tiny_run(tiny_scene, epochs=3, frozen_epochs=1))
    with pytest.raises(SlidemapError, match="frozen_epochs"):
        config.train.changed(freeze_encoder=True)


def test_a_refused_resume_names_the_option_that_differs(tiny_scene: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A finetune run started with --freeze-encoder and resumed without it was refused with
    "resume with the config and --set options that started it", which names neither the flag
    nor which way it differs; the refusal now says both."""
    config = parse_config(tiny_run(tiny_scene))
    frozen = config.changed(train=config.train.changed(freeze_encoder=True))
    with pytest.raises(SlidemapError, match=r"freeze_encoder \(true, now false; 1 setting\(s\) "
                       r"differ\): resume with the config, --set options and --freeze-encoder"):
        check_same_run(run_identity(frozen), config, tmp_path / "run")


def test_a_run_resumes_only_with_the_config_that_started_it(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs after the stop must train as the ones before, and the model file must not credit
    the whole run to a new loss; the thread count may change."""
    run = tmp_path / "run"
    train_interrupted(parse_config(tiny_run(tiny_scene, epochs=3)), run, monkeypatch)
    focal = parse_config({**tiny_run(tiny_scene, epochs=3), "loss": {"focal": 1.0}})
    with pytest.raises(SlidemapError,
                       match=r"trained with another loss\.bce \(1\.0, now null; 3 setting"):
        train(focal, run, resume=True)
    train(parse_config(tiny_run(tiny_scene, epochs=3, threads=1)), run, resume=True)
    text = (run / "history.csv").read_bytes()
    assert text.count(b"\n") == 4 and b"\r" not in text  # header + 3 epochs, one line ending


def test_a_labelled_area_too_small_for_a_window_says_to_label_more(
        tiny_scene: dict[str, Path]) -> None:
    """An area of interest smaller than a quarter of a window: the error names the labelled area,
    which newsite's user can enlarge (newsite sets no training keys)."""
    config = parse_config(tiny_run(tiny_scene))
    source = config.train_scenes[0]
    scene = load_scene_arrays(source.image, source.mask, source.dem, config.inputs)
    small = np.full(scene.target.shape, 255, np.uint8)
    small[40:50, 40:50] = scene.target[40:50, 40:50]
    labelled = SceneArrays(scene.name, scene.x, small)
    windows = RandomWindows([labelled], scene_stats([labelled]), 64, 4, 0.25, False, 0)
    with pytest.raises(SlidemapError, match=r"has 25% of its pixels labelled .* label a larger"):
        next(iter(windows.epoch(1, 4)))


def test_the_summary_line_says_what_chose_the_epoch_kept(
        tiny_scene: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without data.val, select: best keeps the epoch of lowest training loss: the line said
    'best by val F1' of a validation that never ran."""
    raw = tiny_run(tiny_scene, epochs=1)
    del raw["data"]["val"]
    with caplog.at_level("INFO", logger="slidemap"):
        train(parse_config(raw), tmp_path / "run")
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept epoch")]
    assert len(kept) == 1 and "(lowest training loss: no validation data)" in kept[0], kept


def test_a_run_of_ten_steps_trains(tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """5 epochs × 2 steps: a tenth of the steps is one, a warm-up torch's OneCycleLR cannot
    schedule (it raised ZeroDivisionError); it warms up over two and trains."""
    config = parse_config(tiny_run(tiny_scene, epochs=5, windows_per_epoch=8))
    assert config.train.epochs * -(-8 // config.train.batch_size) == 10
    assert train(config, tmp_path / "run").exists()
    assert len(history_losses(tmp_path / "run")) == 5


def test_history_gives_the_rate_each_epoch_trained_at(tiny_scene: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """The lr column is the one-cycle rate of each epoch's first step: it starts at a 25th of
    the peak and ends near 0 (it gave the rate after each epoch's last step, past the end of the
    schedule for the last epoch, so the last two epochs read alike)."""
    train(parse_config(tiny_run(tiny_scene, epochs=4, windows_per_epoch=40, lr=0.01)),
          tmp_path / "run")  # 10 steps an epoch: a warm-up of 4
    with (tmp_path / "run" / "history.csv").open() as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert rates[0] == pytest.approx(0.01 / 25)
    assert len(set(rates)) == 4 and rates[1] > rates[2] > rates[3]


def test_statistics_cover_what_the_network_reads_not_only_pseudo_labels() -> None:
    """A pseudo-labelled target is read whole (``inputs_valid``) but labelled only where the model
    was confident: the statistics are those of its imagery, whichever pixels were kept."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.1, (2, 16, 16)).astype(np.float32)
    x[:, 4:8, 4:8] += 3.0  # a bright slide, the only ground the model was sure of
    labels = np.full((16, 16), 255, np.uint8)
    labels[4:8, 4:8] = 1
    pseudo = SceneArrays("target", x, labels, inputs_valid=np.ones((16, 16), bool))
    stats = scene_stats([pseudo])
    np.testing.assert_allclose(stats.mean, x.reshape(2, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.std, x.reshape(2, -1).std(axis=1), rtol=1e-5)
    labelled = SceneArrays("source", x, np.where(labels == 255, 0, 1).astype(np.uint8))
    labelled.target[:2] = 255  # a scene without inputs_valid: its labelled pixels, as before
    np.testing.assert_allclose(scene_stats([labelled]).mean, x[:, 2:].reshape(2, -1).mean(axis=1),
                               rtol=1e-6)
