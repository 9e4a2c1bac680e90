"""Spatial cross-validation: blocks, folds that never train on scored ground or its buffer,
out-of-fold thresholds, the paired comparison and the command."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from factories import (
    GRID,
    TINY_PREDICT,
    Interrupted,
    interrupt_at_epoch_2,
    reproject_raster,
    run_config,
    tiny_bundle,
    write_config,
    write_raster,
    write_scene,
)
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from slidemap.data.dataset import RandomWindows
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.folds import Block, held_out, make_blocks, scene_names
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.io.modelfile import save_model
from slidemap.schema.config import RunConfig, load_config
from slidemap.train import adaptval as adaptval_module
from slidemap.train import crossval as crossval_module
from slidemap.train.adapt import AdaptOptions
from slidemap.train.adaptval import measure_adaptation
from slidemap.train.crossval import (
    best_threshold,
    compare,
    fit_temperature,
    run_crossval,
    summary_markdown,
    write_tables,
)
from slidemap.train.lineage import lineage

SIDE = 80
TILE = 16


def synthetic_scene(root: Path, name: str, seed: int, dem_hole: bool = False
                    ) -> dict[str, Path]:
    """An RGB + DSM scene with bright 'landslide' squares and a nodata strip on the left (with
    ``dem_hole`` a square where only the DSM has no data), on ground of its own: ``seed`` km
    east of the factories' grid, so that two scenes are two places, as regions A and B."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, size=(3, SIDE, SIDE)).astype(np.uint8)
    labels = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for top, left in rng.integers(8, SIDE - 12, size=(6, 2)):
        labels[top:top + 8, left:left + 8] = 1
    image[:, labels == 1] += 100
    image[:, :, :6] = 0
    labels[:, :6] = 255
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    dsm = (1000.0 * seed + 0.3 * cols + 0.2 * rows).astype(np.float32)
    if dem_hole:
        dsm[40:60, 40:60] = np.nan
    return write_scene(root, name, image, dsm, labels, Affine.translation(1000.0 * seed, 0) @ GRID)


def shifted_crop(scene: dict[str, Path], root: Path, name: str, columns: int
                 ) -> dict[str, Path]:
    """The scene's rasters without their first ``columns`` columns, on a grid of their own that
    keeps every pixel on its ground: another scene of the same slope."""
    out = {}
    for key, path in scene.items():
        with rasterio.open(path) as ds:
            data = ds.read()[:, :, columns:]
            transform, nodata = ds.transform @ Affine.translation(columns, 0), ds.nodata
        out[key] = write_raster(root / f"{name}_{key}.tif", data, transform=transform,
                                nodata=nodata)
    return out


def protocol_config(tmp_path: Path, name: str = "candidate",
                    scenes: list[dict[str, Path]] | None = None, **inputs: object) -> Path:
    scenes = scenes or [synthetic_scene(tmp_path, "east", 1), synthetic_scene(tmp_path, "west", 2)]
    return write_config(tmp_path / f"{name}.yaml", run_config(
        scenes, name=name, inputs={"image_bands": [1, 2, 3], "slope": True, **inputs},
        training={"epochs": 1, "batch_size": 4, "tile": TILE, "windows_per_epoch": 8,
                  "precision": "fp32", "augment": False, "min_valid": 0.1},
        predict=TINY_PREDICT, crossval={"blocks": [2, 2], "folds": 2, "seeds": [0, 1]}))


def test_no_fold_trains_on_ground_it_scores_or_its_buffer(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    config = load_config(protocol_config(tmp_path))
    trainings: list[dict] = []
    real_train, real_sample = crossval_module.train, RandomWindows._sample

    def spy_train(fold_config, run_dir, resume, overwrite, extra_train, how_to_go_on):
        trainings.append({"fold": int(run_dir.name.removeprefix("fold")),
                          "arrays": list(extra_train), "samples": []})
        assert not fold_config.train_scenes and not fold_config.val_scenes
        return real_train(fold_config, run_dir, resume=resume, overwrite=overwrite,
                          extra_train=extra_train, how_to_go_on=how_to_go_on)

    def spy_sample(self, index, window, rng):
        sample = real_sample(self, index, window, rng)
        trainings[-1]["samples"].append((self.scenes[index].name, window, sample))
        return sample

    monkeypatch.setattr(crossval_module, "train", spy_train)
    monkeypatch.setattr(RandomWindows, "_sample", spy_sample)
    summary = run_crossval(config, tmp_path / "cv", seeds=(0,))
    layout = json.loads((tmp_path / "cv" / "blocks_layout.json").read_text())
    buffer = layout["buffer_px"]
    assert buffer >= TILE  # at least one training window
    blocks = [Block(**b) for b in layout["blocks"]]
    assert len(blocks) == 8 and {b.fold for b in blocks} == {0, 1}
    assert len(trainings) == 2  # one per fold
    scene_names = ["east", "west"]
    for training in trainings:
        fold = training["fold"]
        for array in training["arrays"]:  # the masks and inputs the loop was given
            index = scene_names.index(array.name)
            hidden = held_out(blocks, fold, index, array.target.shape, buffer)
            assert (array.target[hidden] == 255).all()
            assert np.isnan(array.x[:, hidden]).all()
            # Every training pixel lies more than one window from every scored block.
            ys, xs = np.nonzero(array.target != 255)
            for block in blocks:
                if block.fold == fold and block.scene == index:
                    dy = np.maximum(np.maximum(block.top - ys, ys - (block.bottom - 1)), 0)
                    dx = np.maximum(np.maximum(block.left - xs, xs - (block.right - 1)), 0)
                    assert np.maximum(dy, dx).min() > TILE
        assert training["samples"]
        for name, window, sample in training["samples"]:  # the windows the network saw
            index = scene_names.index(name)
            hidden = held_out(blocks, fold, index, (SIDE, SIDE), buffer)
            rows = slice(window.row_off, window.row_off + window.height)
            cols = slice(window.col_off, window.col_off + window.width)
            seen = hidden[rows, cols]
            assert not sample["valid"][0][seen].any()
            assert (sample["x"][:, seen] == 0).all()
    # Each fold's run scored exactly its own blocks, every block once per seed.
    for fold in (0, 1):
        scored = json.loads((tmp_path / "cv" / "candidate" / "s0" / f"fold{fold}"
                             / "blocks.json").read_text())
        assert set(scored) == {b.name for b in blocks if b.fold == fold}
    # Blocks tile the labelled ground: the pooled matrix counts every labelled pixel once.
    labelled = sum(int((np.asarray(load_mask(config, i)) != 255).sum()) for i in range(2))
    assert summary["recipes"]["candidate"]["pooled"]["pixels"] == labelled


def load_mask(config: RunConfig, index: int) -> np.ndarray:
    with rasterio.open(config.train_scenes[index].mask) as ds:
        return ds.read(1)


def test_scenes_on_one_ground_hold_a_folds_blocks_out_of_each_other(tmp_path: Path) -> None:
    whole = synthetic_scene(tmp_path, "whole", 1)
    shift = 30
    config = load_config(protocol_config(tmp_path, scenes=[
        whole, shifted_crop(whole, tmp_path, "crop", shift)]))
    scenes = crossval_module._scene_arrays(config)
    grids = crossval_module.scene_grids(config, scenes)
    blocks = make_blocks([s.valid for s in scenes], [s.name for s in scenes], 2, 2, 2)
    to_whole = {0: 0, 1: shift}  # a scene's column on the whole scene's grid
    for fold in (0, 1):
        trained = crossval_module.masked_scenes(  # as run_crossval hands them to train
            scenes, crossval_module.training_ground(scenes, blocks, fold, TILE, grids))
        assert trained
        # The ground the fold scores, in either scene, grown by the buffer, on the whole grid.
        near = np.zeros((SIDE, SIDE), dtype=bool)
        for block in blocks:
            if block.fold == fold:
                index = block.scene
                scored = block.mask(scenes[index].target.shape) & scenes[index].valid
                ys, xs = np.nonzero(scored)
                near[ys, xs + to_whole[index]] = True
        near = ndimage.maximum_filter(near, size=2 * TILE + 1)
        for array in trained:
            index = [s.name for s in scenes].index(array.name)
            ys, xs = np.nonzero(array.target != 255)
            assert not near[ys, xs + to_whole[index]].any()
            assert np.isnan(array.x[:, near[:, to_whole[index]:]]).all()


def test_a_block_at_a_scenes_edge_holds_its_buffer_out_of_the_scene_beside(
        tmp_path: Path) -> None:
    """Two scenes side by side that share 4 columns of ground, as regions A and B meet: the
    buffer of the west scene's edge block stopped at the west scene's edge, so the east scene
    trained on ground 1 px from it."""
    east = synthetic_scene(tmp_path, "east", 1)
    west = {}
    for key, path in east.items():  # the same rasters, moved to begin 4 px before east ends
        with rasterio.open(path) as ds:
            west[key] = write_raster(tmp_path / f"west_{key}.tif", ds.read(),
                                     transform=ds.transform @ Affine.translation(SIDE - 4, 0),
                                     nodata=ds.nodata)
    config = load_config(protocol_config(tmp_path, scenes=[east, west]))
    scenes = crossval_module._scene_arrays(config)
    grids = crossval_module.scene_grids(config, scenes)
    blocks = make_blocks([s.valid for s in scenes], [s.name for s in scenes], 2, 2, 2)
    to_east = {0: 0, 1: SIDE - 4}  # a scene's column on the grid that holds both
    for fold in (0, 1):
        near = np.zeros((SIDE, 2 * SIDE), dtype=bool)
        for block in blocks:
            if block.fold == fold:
                ys, xs = np.nonzero(block.mask((SIDE, SIDE)) & scenes[block.scene].valid)
                near[ys, xs + to_east[block.scene]] = True
        near = ndimage.maximum_filter(near, size=2 * TILE + 1)
        hidden = crossval_module.training_ground(scenes, blocks, fold, TILE, grids)
        for array in crossval_module.masked_scenes(scenes, hidden):
            index = [s.name for s in scenes].index(array.name)
            ys, xs = np.nonzero(array.target != 255)
            assert not near[ys, xs + to_east[index]].any()


def test_a_fold_without_training_ground_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    config = load_config(protocol_config(tmp_path))
    wide = config.changed(crossval={"blocks": [2, 2], "folds": 2, "seeds": [0], "buffer": 60})
    with pytest.raises(SlidemapError, match="no training ground left"):
        run_crossval(wide, tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
    # a seed no training takes (--seeds=-1) is refused before the folder is made, not as the
    # first fold starts to train
    for seeds in ((-1,), (0, 2**31)):
        with pytest.raises(SlidemapError, match=r"training\.seed must be"):
            run_crossval(config, tmp_path / "cv", seeds=seeds)
        assert not (tmp_path / "cv").exists()


def test_an_ensemble_recipe_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """training.members trains an ensemble in slidemap train alone: crossval wrote its layout
    and first fold folder, then stopped naming fine-tuning and self-training."""
    config = load_config(protocol_config(tmp_path))
    ensemble = config.changed(train=config.train.changed(members=2))
    with pytest.raises(SlidemapError, match=r"baseline's config: training.members 2 .* crossval "
                                            r"trains one network per run"):
        run_crossval(config, tmp_path / "cv", baseline=ensemble)
    assert not (tmp_path / "cv").exists()


def test_a_band_without_labelled_rows_gives_no_block() -> None:
    valid = np.zeros((100, 100), dtype=bool)
    valid[40:44] = True  # 4 labelled rows, cut into 4 × 2 blocks: quantiles meet
    blocks = make_blocks([valid], ["strip"], 4, 2, 2)
    cover = np.zeros(valid.shape, dtype=int)
    for block in blocks:
        assert valid[block.mask(valid.shape)].any()
        cover += block.mask(valid.shape)
    assert (cover[valid] == 1).all()


def test_crossval_command_writes_tables_and_comparison(tmp_path: Path, run_cli) -> None:
    candidate = protocol_config(tmp_path, "candidate", relief_m=4.0)
    baseline = protocol_config(tmp_path, "baseline", dem=True)
    code, err = run_cli("crossval", candidate, "--baseline", baseline, "--out", tmp_path / "cv",
                        "--seeds", "0,1")
    assert code == 0, err
    with (tmp_path / "cv" / "blocks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 8  # recipes × seeds × blocks
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    comparison = summary["comparison"]
    low, high = comparison["interval_95"]
    assert low <= comparison["pooled_f1_difference"] <= high
    assert len(comparison["blocks"]) == 8
    text = (tmp_path / "cv" / "summary.md").read_text()
    assert "keep the baseline" in text or "adopt" in text
    assert "worst block" in text
    # A rerun keeps every scored fold: nothing trains again.
    before = (tmp_path / "cv" / "summary.json").read_text()
    code, err = run_cli("crossval", candidate, "--baseline", baseline, "--out", tmp_path / "cv",
                        "--seeds", "0,1")
    assert code == 0, err
    assert (tmp_path / "cv" / "summary.json").read_text() == before
    # A figure with no value (one recipe's temperature, say) is written as null, not bare NaN.
    recipe = next(iter(summary["recipes"]))
    summary["recipes"][recipe]["oof_temperature"] = float("nan")
    (tmp_path / "again").mkdir()
    write_tables({**summary, "rows": rows}, tmp_path / "again")
    strict = json.loads((tmp_path / "again" / "summary.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert strict["recipes"][recipe]["oof_temperature"] is None


def test_blocks_split_the_valid_ground_into_equal_parts() -> None:
    valid = np.zeros((60, 90), dtype=bool)
    rows, cols = np.mgrid[0:60, 0:90]
    valid[np.abs(rows - cols * 0.6) < 12] = True  # a diagonal band, like a valley
    blocks = make_blocks([valid], ["band"], 2, 3, folds=3)
    cover = np.zeros(valid.shape, dtype=int)
    for block in blocks:
        cover += block.mask(valid.shape)
    assert (cover[valid] == 1).all()  # every valid pixel in exactly one block
    sizes = [int(valid[b.mask(valid.shape)].sum()) for b in blocks]
    assert len(blocks) == 6 and max(sizes) < 1.6 * min(sizes)
    assert [b.fold for b in blocks] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(SlidemapError, match="cannot fill"):
        make_blocks([valid], ["band"], 1, 2, folds=3)


def test_buffer_below_a_training_window_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(protocol_config(tmp_path).read_text())
    raw["crossval"]["buffer"] = TILE - 1
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SlidemapError, match="less than one training window"):
        run_crossval(load_config(path), tmp_path / "cv")


def test_terrain_descriptors_reaching_past_the_buffer_are_refused(tmp_path: Path) -> None:
    """Relief is computed over the whole scene before a fold blanks its blocks: a radius longer
    than the buffer (0.5 m pixels, buffer one 16 px window) would let training pixels read the
    DEM of scored ground. A radius that stops at the buffer is accepted."""
    far = load_config(protocol_config(tmp_path, "far", relief_m=12.0))  # 24 px
    with pytest.raises(SlidemapError, match=r"set crossval\.buffer to at least 24"):
        run_crossval(far, tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
    near = load_config(protocol_config(tmp_path, "near", relief_m=[2.0, 8.0]))  # 16 px
    assert crossval_module.terrain_reach(near) == TILE
    crossval_module.check_terrain_reach(crossval_module.Recipe("candidate", near), TILE)


def test_terrain_reach_takes_the_step_a_whole_scene_is_read_at(tmp_path: Path) -> None:
    """A scene read whole at a factor its side does not divide has working pixels a little
    smaller than the factor says (67 px of 0.5 m in 34: 0.985 m, not 1 m), and Scene.read
    sizes the relief radius from that step: 16.5 m is 17 px there, not 16, so a buffer of 16
    is refused."""
    rng = np.random.default_rng(0)
    scene = write_scene(tmp_path, "odd", rng.integers(40, 90, size=(3, 67, 67)).astype(np.uint8),
                        np.zeros((67, 67), np.float32), np.zeros((67, 67), np.uint8))
    config = load_config(protocol_config(tmp_path, scenes=[scene], relief_m=16.5,
                                         resolution_m=1.0))
    assert crossval_module.terrain_reach(config) == 17
    with pytest.raises(SlidemapError, match="at least 17"):
        crossval_module.check_terrain_reach(crossval_module.Recipe("candidate", config), TILE)


def test_threshold_and_bootstrap_on_known_counts() -> None:
    rng = np.random.default_rng(1)
    target = (rng.random(4000) > 0.7).astype(np.uint8)
    prob = np.clip(0.3 + 0.35 * target + rng.normal(0, 0.1, 4000), 0, 1).astype(np.float32)
    confusion = BinaryConfusion()
    confusion.update(prob, target)
    fitted = best_threshold([confusion])
    sweep = max(confusion.sweep(np.round(np.arange(5, 96) / 100, 2)), key=lambda r: r["f1"])
    assert fitted == pytest.approx(sweep["threshold"])
    assert 0.4 < fitted < 0.7  # between the two classes' means, not the default 0.5 by luck
    # Calibrated probabilities need no temperature; the same logits doubled need T = 2, halved
    # T = 0.5 (logits within the histograms' resolution).
    logits = rng.normal(0, 1.0, 200_000)
    truth = (rng.random(logits.size) < 1 / (1 + np.exp(-logits))).astype(np.uint8)
    for factor, expected in ((1.0, 1.0), (2.0, 2.0), (0.5, 0.5)):
        calibrated = BinaryConfusion()
        calibrated.update((1 / (1 + np.exp(-factor * logits))).astype(np.float32), truth)
        assert fit_temperature([calibrated]) == pytest.approx(expected, rel=0.05)
    better = np.array([[[90, 10, 10, 890]] * 8, [[88, 12, 12, 888]] * 8])
    worse = np.array([[[70, 30, 30, 870]] * 8, [[72, 28, 28, 872]] * 8])
    result = compare(better, worse, [f"b{i}" for i in range(8)])
    assert result["pooled_f1_difference"] == pytest.approx(0.89 - 0.71)
    assert result["interval_95"][0] > 0 and result["adopt"]
    assert not compare(worse, better, [f"b{i}" for i in range(8)])["adopt"]


def test_the_summary_says_how_its_bootstrap_drew_so_anyone_can_recompute_it() -> None:
    """summary.md gave the draws alone: the generator and its seed, without which nobody could
    reproduce the interval from blocks.csv, were in the code only."""
    rng = np.random.default_rng(5)
    candidate = rng.integers(10, 100, size=(2, 8, 4))
    baseline = rng.integers(10, 100, size=(2, 8, 4))
    result = compare(candidate, baseline, [f"b{i}" for i in range(8)])
    summary = {"seeds": [0, 1], "blocks": 8, "folds": 4, "buffer_px": 16, "recipes": {},
               "comparison": result}
    text = " ".join(summary_markdown(summary).split())
    assert "2000 draws, numpy default_rng seed 0, block indexes in this table's order" in text

    def f1(counts: np.ndarray) -> float:
        tp, fp, fn = counts[..., 0].sum(), counts[..., 1].sum(), counts[..., 2].sum()
        return 2 * tp / (2 * tp + fp + fn)

    picks = np.random.default_rng(0).integers(0, 8, size=(2000, 8))
    draws = [f1(candidate[:, p]) - f1(baseline[:, p]) for p in picks]
    assert result["interval_95"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])))


def test_a_run_short_of_the_rules_seeds_or_blocks_decides_nothing() -> None:
    """RULE.md asks for at least 2 seeds and 8 blocks: a run of one seed (no block has a spread
    to lose within) or four blocks printed "adopt" as if the rule had decided."""
    better = np.array([[[90, 10, 10, 890]] * 8, [[88, 12, 12, 888]] * 8])
    worse = np.array([[[70, 30, 30, 870]] * 8, [[72, 28, 28, 872]] * 8])
    assert compare(better, worse, [f"b{i}" for i in range(8)])["decision"] == "adopt"
    for candidate, baseline, names, has in (
            (better[:1], worse[:1], [f"b{i}" for i in range(8)], "1 seed"),
            (better[:, :4], worse[:, :4], [f"b{i}" for i in range(4)], "4 blocks")):
        result = compare(candidate, baseline, names)
        assert result["interval_95"][0] > 0 and not result["adopt"]
        assert result["decision"].startswith("none: RULE.md asks for at least 2 seeds and 8 "
                                             f"blocks, this run has {has}")
        assert result["decision"].endswith("(its tests alone would adopt)")


def test_a_block_lost_by_exactly_its_seed_spread_does_not_block_adoption() -> None:
    """RULE.md: a block may lose up to (≤) its seed spread. Block b0's candidate F1s over two
    seeds are 2/3 and 1/2 (spread 1/6, mean 7/12), the baseline's 3/4 twice: it loses exactly
    1/6, which floats put a rounding error above the spread (and kept the baseline)."""
    names = [f"b{i}" for i in range(8)]
    candidate = np.array([[[1, 1, 0, 100]] + [[90, 10, 10, 890]] * 7,
                          [[1, 2, 0, 100]] + [[88, 12, 12, 888]] * 7])
    baseline = np.array([[[3, 2, 0, 100]] + [[70, 30, 30, 870]] * 7] * 2)
    result = compare(candidate, baseline, names)
    assert result["interval_95"][0] > 0
    assert not result["blocks"][0]["loses_beyond_spread"]
    assert result["adopt"]
    # F1s 1/2 and 1/3: the same spread, a loss of 1/3 beyond it: keep the baseline
    candidate[:, 0] = [[1, 2, 0, 100], [1, 4, 0, 100]]
    result = compare(candidate, baseline, names)
    assert result["blocks"][0]["loses_beyond_spread"] and not result["adopt"]


def test_a_changed_recipe_refuses_the_old_folds(tmp_path: Path) -> None:
    path = protocol_config(tmp_path)
    config = load_config(path)
    layout = make_blocks([np.ones((SIDE, SIDE), bool)] * 2, ["east", "west"], 2, 2, 2)
    arrays = crossval_module._scene_arrays(config)
    crossval_module.run_fold(config, arrays, layout, 0, TILE, 0, tmp_path / "fold")
    assert (tmp_path / "fold" / "blocks.json").exists()
    with pytest.raises(SlidemapError, match="another config"):
        crossval_module.run_fold(config.changed(loss={"dice": 1.0}), arrays, layout, 0, TILE,
                                 0, tmp_path / "fold")


def test_more_seeds_in_the_config_keep_the_folds_already_trained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crossval.seeds says which seeds the protocol runs, not how a fold trains: adding one to
    the config (or with --set) continues the protocol, as --seeds does, instead of refusing
    every fold trained before, finished or stopped mid-training."""
    base = load_config(protocol_config(tmp_path))
    config = base.changed(training={**dict(base.training), "epochs": 2})
    more = config.changed(crossval={**dict(config.crossval), "seeds": (0, 1, 2)})
    layout = make_blocks([np.ones((SIDE, SIDE), bool)] * 2, ["east", "west"], 2, 2, 2)
    arrays = crossval_module._scene_arrays(config)
    crossval_module.run_fold(config, arrays, layout, 0, TILE, 0, tmp_path / "done")
    before = (tmp_path / "done" / "blocks.json").read_text()
    crossval_module.run_fold(more, arrays, layout, 0, TILE, 0, tmp_path / "done")
    assert (tmp_path / "done" / "blocks.json").read_text() == before
    interrupt_at_epoch_2(monkeypatch, Interrupted)
    with pytest.raises(Interrupted):
        crossval_module.run_fold(config, arrays, layout, 1, TILE, 0, tmp_path / "stopped")
    monkeypatch.undo()
    crossval_module.run_fold(more, arrays, layout, 1, TILE, 0, tmp_path / "stopped")
    assert (tmp_path / "stopped" / "blocks.json").exists()


def test_scenes_whose_images_share_a_stem_are_all_scored(tmp_path: Path) -> None:
    assert scene_names([Path("x/east.tif"), Path("y/west.tif")]) == ["east", "west"]
    assert scene_names([Path("a/x/image.tif"), Path("b/x/image.tif"), Path("b/west.tif")]) \
        == ["scene0-image", "scene1-image", "west"]
    scenes = [synthetic_scene(tmp_path / "sa", "image", 1),
              synthetic_scene(tmp_path / "sb", "image", 2)]
    config = load_config(protocol_config(tmp_path, scenes=scenes))
    summary = run_crossval(config, tmp_path / "cv", seeds=(0,))
    layout = json.loads((tmp_path / "cv" / "blocks_layout.json").read_text())
    names = [b["name"] for b in layout["blocks"]]
    assert len(set(names)) == len(names) == 8 and names[0] == "sa-image-r0c0"
    # Both scenes count: the pooled matrix holds every labelled and landslide pixel once.
    masks = [load_mask(config, i) for i in range(2)]
    rows = summary["rows"]
    assert sum(r["pixels"] for r in rows) == sum(int((m != 255).sum()) for m in masks)
    assert sum(round(r["pixels"] * r["landslide"]) for r in rows) \
        == sum(int((m == 1).sum()) for m in masks)


def test_candidate_and_baseline_are_scored_on_the_same_pixels(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setattr(logging.getLogger("slidemap"), "propagate", True)
    caplog.set_level(logging.INFO, logger="slidemap")
    scenes = [synthetic_scene(tmp_path, "east", 1, dem_hole=True),
              synthetic_scene(tmp_path, "west", 2)]
    candidate = load_config(protocol_config(tmp_path, "candidate", scenes, dem=True))
    baseline = load_config(protocol_config(tmp_path, "baseline", scenes, slope=False))
    summary = run_crossval(candidate, tmp_path / "cv", baseline, seeds=(0,))
    pixels = {(r["recipe"], r["block"]): r["pixels"] for r in summary["rows"]}
    names = {block for _, block in pixels}
    assert all(pixels[("candidate", n)] == pixels[("baseline", n)] for n in names)
    hole = 20 * 20  # labelled for the baseline (no DEM), not for the candidate
    labelled = sum(int((load_mask(candidate, i) != 255).sum()) for i in range(2)) - hole
    assert summary["recipes"]["baseline"]["pooled"]["pixels"] == labelled
    assert f"{hole:,} labelled px of the baseline are left out" in caplog.text
    # The no-DEM recipe run alone trains and scores on its own labels; paired later with the
    # DEM recipe in the same folder, those folds would be reused on other pixels: refused.
    # One block a scene, so the hole inside it leaves the cuts as they were.
    whole = {"blocks": [1, 1], "folds": 2, "seeds": [0]}
    alone, paired = baseline.changed(crossval=whole), candidate.changed(crossval=whole)
    run_crossval(alone, tmp_path / "alone", seeds=(0,))
    with pytest.raises(SlidemapError, match="other labelled pixels"):
        run_crossval(alone, tmp_path / "alone", paired, seeds=(0,))


def test_folds_copied_from_a_run_on_other_pixels_are_refused(tmp_path: Path) -> None:
    """The protocol's scripts copy a recipe's folds into the next comparison. Folds the no-DEM
    recipe trained and scored alone (on the DEM hole too), copied beside a DEM recipe, were
    reused: the east block was scored on 5,520 px for one recipe and 5,920 for the other."""
    scenes = [synthetic_scene(tmp_path, "east", 1, dem_hole=True),
              synthetic_scene(tmp_path, "west", 2)]
    whole = {"blocks": [1, 1], "folds": 2, "seeds": [0]}
    nodem = load_config(protocol_config(tmp_path, "nodem", scenes, slope=False)
                        ).changed(crossval=whole)
    dem = load_config(protocol_config(tmp_path, "dem", scenes, dem=True)).changed(crossval=whole)
    run_crossval(nodem, tmp_path / "alone", seeds=(0,))
    (tmp_path / "paired").mkdir()
    shutil.copytree(tmp_path / "alone" / "candidate", tmp_path / "paired" / "candidate")
    with pytest.raises(SlidemapError, match="labelled pixels"):
        run_crossval(nodem, tmp_path / "paired", dem, seeds=(0,))


def test_folds_trained_on_other_scene_data_are_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold recorded its config and file names, not their content: with every background
    pixel of a mask relabelled under the same name, a rerun reused the stale folds and wrote the
    same summary. Folds are reused on the same data only, alone or copied beside another recipe
    as the protocol's scripts copy them; folds written before their data was recorded are
    reused with a warning."""
    scenes = [synthetic_scene(tmp_path, "east", 1), synthetic_scene(tmp_path, "west", 2)]
    whole = {"blocks": [1, 1], "folds": 2, "seeds": [0]}
    slope = load_config(protocol_config(tmp_path, "slope", scenes)).changed(crossval=whole)
    dem = load_config(protocol_config(tmp_path, "dem", scenes, dem=True)).changed(crossval=whole)
    alone, paired = tmp_path / "alone", tmp_path / "paired"
    run_crossval(slope, alone, seeds=(0,))
    kept = (alone / "summary.json").read_bytes()
    trained: list[str] = []
    real_train = crossval_module.train

    def spy_train(fold_config, run_dir, **options):
        trained.append(run_dir.parent.parent.name)
        return real_train(fold_config, run_dir, **options)

    monkeypatch.setattr(crossval_module, "train", spy_train)
    run_crossval(slope, alone, seeds=(0,))
    paired.mkdir()
    shutil.copytree(alone / "candidate", paired / "baseline")
    run_crossval(dem, paired, slope, seeds=(0,))
    assert trained == ["candidate", "candidate"]  # the paired candidate's folds alone
    with rasterio.open(scenes[0]["mask"], "r+") as ds:
        labels = ds.read(1)
        ds.write(np.where(labels == 0, 1, labels).astype(np.uint8), 1)
    with pytest.raises(SlidemapError, match="other data"):
        run_crossval(slope, alone, seeds=(0,))
    assert (alone / "summary.json").read_bytes() == kept and len(trained) == 2
    for path in alone.glob("candidate/s0/fold*/fold.json"):
        record = json.loads(path.read_text())
        del record["data"]
        path.write_text(json.dumps(record))
    with pytest.warns(SlidemapWarning, match="cannot check"):
        run_crossval(slope, alone, seeds=(0,))
    assert len(trained) == 2


def test_adaptations_of_a_retrained_fold_are_measured_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crossval --adapt kept a block's adaptation while its settings and the fold model's path
    matched: with a mask relabelled and the refused folds deleted, as crossval asks, the
    retrained folds (same paths) kept the old models' adaptations, scored on the old labels.
    They are kept while the fold model's weights and the scene's data are the same only (those
    written before both were recorded, with a warning that they cannot be checked)."""
    scenes = [synthetic_scene(tmp_path, "east", 1), synthetic_scene(tmp_path, "west", 2)]
    config = load_config(protocol_config(tmp_path, "slope", scenes)).changed(
        crossval={"blocks": [1, 1], "folds": 2, "seeds": [0]})
    out, options = tmp_path / "cv", AdaptOptions(windows=8, rounds=2, batch_size=4, tile=TILE)
    adapted: list[str] = []
    real_adapt = adaptval_module.adapt_model

    def spy_adapt(bundle, chunks, *args):
        adapted.append(bundle.path.parent.name)
        return real_adapt(bundle, chunks, *args)

    def measure() -> dict[str, list[int]]:
        """Each block's crossval score beside its adaptation's score of the model as trained."""
        run_crossval(config, out, seeds=(0,))
        measure_adaptation(config, out, options, (0,))
        scored = {name: c["counts"] for path in out.glob("candidate/s0/fold*/blocks.json")
                  for name, c in json.loads(path.read_text()).items()}
        for path in (out / "adapt" / "s0").glob("*.json"):
            assert json.loads(path.read_text())["as_trained"]["counts"] == scored[path.stem]
        return scored

    monkeypatch.setattr(adaptval_module, "adapt_model", spy_adapt)
    before = measure()
    measure()
    assert sorted(adapted) == ["fold0", "fold1"]  # the unchanged rerun adapted nothing again
    with rasterio.open(scenes[0]["mask"], "r+") as ds:
        labels = ds.read(1)
        ds.write(np.where(labels == 0, 1, labels).astype(np.uint8), 1)
    with pytest.raises(SlidemapError, match="other data"):
        run_crossval(config, out, seeds=(0,))
    shutil.rmtree(out / "candidate")
    assert measure() != before
    assert sorted(adapted) == ["fold0", "fold0", "fold1", "fold1"]
    measure()
    assert len(adapted) == 4
    for path in (out / "adapt" / "s0").glob("*.json"):  # as written before they were recorded
        done = json.loads(path.read_text())
        del done["model_sha256"], done["data"]
        path.write_text(json.dumps(done))
    with pytest.warns(SlidemapWarning, match="cannot check"):
        measure()
    assert len(adapted) == 4


def test_a_refused_rerun_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    config = load_config(protocol_config(tmp_path))
    out = tmp_path / "cv"
    run_crossval(config, out, seeds=(0,))
    kept = {p: p.read_bytes() for p in (out / "blocks_layout.json", out / "summary.json",
                                        out / "blocks.csv")}
    other = config.changed(crossval={"blocks": [3, 2], "folds": 2, "seeds": [0]})
    with pytest.raises(SlidemapError, match="block layout"):
        run_crossval(other, out, seeds=(0,))
    assert all(p.read_bytes() == text for p, text in kept.items())


def start_from(tmp_path: Path, config: RunConfig, name: str, provenance: dict) -> RunConfig:
    """``config`` starting from a model file whose sidecar records ``provenance``."""
    bundle = tiny_bundle()
    bundle.provenance = provenance
    return config.changed(init=save_model(bundle, tmp_path / "models" / name))


def test_an_init_that_trained_on_a_scored_scene_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(protocol_config(tmp_path))
    east = config.train_scenes[0].image
    monkeypatch.chdir(tmp_path)
    elsewhere = synthetic_scene(tmp_path, "elsewhere", 5)["image"]  # ground of its own
    records = {  # as train writes it, by a relative name, and as a self-training target
        "as_written": {"config": {"train": [{"image": str(east), "mask": None, "dem": None}]}},
        "relative": {"config": {"train": [{"image": str(elsewhere)},
                                          {"image": os.path.relpath(east)}]}},
        "selftrain": {"config": {"train": [{"image": str(elsewhere)}]},
                      "selftrain_targets": [{"image": str(east)}]},
    }
    for name, record in records.items():
        started = start_from(tmp_path, config, name, record)
        with pytest.raises(SlidemapError, match=f"candidate's init model .* trained on scene "
                                                f".*{east.name}, which crossval scores"):
            run_crossval(started, tmp_path / f"cv_{name}", seeds=(0,))
        assert not (tmp_path / f"cv_{name}").exists()
    # A model fine-tuned from one that saw the scene saw it too; so does a baseline's.
    base = start_from(tmp_path, config, "base", records["as_written"]).init
    chained = start_from(tmp_path, config, "tuned", {"config": {
        "train": [{"image": str(elsewhere)}], "init": str(base)}})
    with pytest.raises(SlidemapError, match="baseline's init model"):
        run_crossval(config, tmp_path / "cv", chained, seeds=(0,))
    # Trained elsewhere: accepted. No record: accepted with a warning that it cannot be checked,
    # a SlidemapWarning that a notebook filters or turns into an error as it does the others
    # (a log line, which warnings filters and pytest.warns never saw).
    clean = start_from(tmp_path, config, "clean",
                       {"config": {"train": [{"image": str(elsewhere)}]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        crossval_module.check_init_unseen(crossval_module.Recipe("candidate", clean))
    unrecorded = start_from(tmp_path, config, "unrecorded", {"epoch": 3})
    with pytest.warns(SlidemapWarning, match="cannot check.*records no training run"):
        crossval_module.check_init_unseen(crossval_module.Recipe("candidate", unrecorded))


def test_an_init_whose_epoch_was_selected_on_a_scored_scene_is_refused(tmp_path: Path) -> None:
    """Its data.val was ignored: validation on a scored scene chose the epoch it keeps, so its
    labels shaped the model as surely as training on it would."""
    config = load_config(protocol_config(tmp_path))
    east = str(config.train_scenes[0].image)
    elsewhere = str(tmp_path / "elsewhere.tif")
    run = {"train": [{"image": elsewhere}], "val": [{"image": east}]}
    for name, training in (("best", {"select": "best"}), ("unrecorded", None)):
        record = {**run, **({"training": training} if training else {})}
        started = start_from(tmp_path, config, name, {"config": record})
        with pytest.raises(SlidemapError, match=f"chosen by validation .* scene .*{east}, "
                                                "which crossval scores"):
            crossval_module.check_init_unseen(crossval_module.Recipe("candidate", started))
    # select: last keeps the last epoch: validation only reported figures
    last = start_from(tmp_path, config, "last", {"config": {**run, "training": {"select": "last"}}})
    crossval_module.check_init_unseen(crossval_module.Recipe("candidate", last))


def test_an_init_trained_on_another_file_of_scored_ground_is_refused(tmp_path: Path) -> None:
    """The check compared file names: a crop of a scored scene, or the scene in another CRS,
    was ground the init had learnt, accepted as unseen."""
    config = load_config(protocol_config(tmp_path))
    east = {k: Path(v) for k, v in config.train_scenes[0].model_dump().items()
            if k in ("image", "dem", "mask")}
    crop = shifted_crop(east, tmp_path, "east_crop", 50)["image"]
    geographic = reproject_raster(east["dem"], tmp_path / "east_4326.tif", "EPSG:4326")
    for name, image in (("crop", crop), ("geographic", geographic)):
        for key in ("train", "val"):
            started = start_from(tmp_path, config, f"{name}_{key}",
                                 {"config": {"train": [], "val": [], key: [{"image": str(image)}]}})
            with pytest.raises(SlidemapError, match=f"{image.name}, on the ground of scene "
                                                    f".*east.tif, which crossval scores"):
                crossval_module.check_init_unseen(crossval_module.Recipe("candidate", started))
    # Ground beside it is unseen; a file that cannot be read is warned about.
    beside = write_raster(tmp_path / "beside.tif", np.ones((3, SIDE, SIDE), dtype=np.uint8),
                          transform=Affine.translation(1000.0 + SIDE / 2, 0) @ GRID)  # edge on
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"")
    local = write_raster(tmp_path / "local.tif", np.ones((3, SIDE, SIDE), dtype=np.uint8),
                         crs=CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],'
                                          'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'))
    started = start_from(tmp_path, config, "beside", {"config": {"train": [
        {"image": str(beside)}, {"image": str(broken)}, {"image": str(local)}]}})
    with pytest.warns(SlidemapWarning, match="cannot check.*broken.tif cannot be read"):
        crossval_module.check_init_unseen(crossval_module.Recipe("candidate", started))


def test_data_val_that_crossval_does_not_use_is_warned_about(tmp_path: Path) -> None:
    """It was dropped in silence, and folds with select: best then kept the epoch of lowest
    training loss, not the one a validation would choose."""
    config = load_config(protocol_config(tmp_path))
    validated = config.changed(data={"train": config.data.train, "val": config.data.train[:1]})
    for select, kept in (("best", "lowest training loss"), ("last", "its last epoch")):
        recipe = validated.changed(training={**validated.training.model_dump(),
                                             "select": select})
        with pytest.warns(SlidemapWarning, match=f"does not use the candidate's data.val: "
                                                 f"each fold keeps .*{kept}"), \
                pytest.raises(SlidemapError, match="seed"):  # stopped before training
            run_crossval(recipe, tmp_path / "cv", seeds=(-1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        with pytest.raises(SlidemapError, match="seed"):
            run_crossval(config, tmp_path / "cv", seeds=(-1,))


def test_block_names_and_lineage_read_gdal_names_as_written(tmp_path: Path) -> None:
    """Both took images as Paths: blocks of two archives' image.tif were named after 'a.zip',
    and an init that trained on /vsizip//abs/d.zip/o.tif had an image 'not found from here'."""
    assert scene_names(["/vsizip//d/a.zip/image.tif", "/vsizip//d/b.zip/image.tif"]) \
        == ["a-image", "b-image"]
    assert scene_names(['HDF5:"/d/f.h5"://img', "x/west.tif"]) == ["f_img", "west"]
    config = load_config(protocol_config(tmp_path))
    zipped = f"/vsizip/{tmp_path}/delivery.zip/ortho.tif"
    started = start_from(tmp_path, config, "zipped", {"config": {"train": [{"image": zipped}]}})
    assert lineage(started.init).images == [zipped]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlidemapWarning)
        crossval_module.check_init_unseen(crossval_module.Recipe("candidate", started))
