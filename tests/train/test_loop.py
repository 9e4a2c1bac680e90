"""The training loop's edge cases as a researcher meets them: validation data that cannot
choose an epoch, and a run folder that a resume finds edited."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import (
    TINY_PREDICT,
    TINY_TRAINING,
    run_config,
    tiny_run,
    train_interrupted,
    write_config,
)

from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.schema.config import load_config
from slidemap.train import loop
from slidemap.train.checks import smallest_batch
from slidemap.train.loop import train


def _no_landslide_copy(scene: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """``scene`` with its labels all background (0), nodata kept."""
    with rasterio.open(scene["mask"]) as src:
        profile, labels = src.profile, src.read(1)
    mask = tmp_path / "no_landslide_mask.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.where(labels == 255, 255, 0).astype(labels.dtype), 1)
    return {**scene, "mask": mask}


@pytest.mark.parametrize("select", ["best", "last"])
def test_validation_without_a_landslide(tiny_scene: dict[str, Path], tmp_path: Path,
                                        select: str) -> None:
    """F1 is 0 at every epoch on such data, so ``select: best`` kept epoch 1 as "best by val
    F1": it is refused before training; ``select: last`` trains, with a warning."""
    val = _no_landslide_copy(tiny_scene, tmp_path)
    config = load_config(write_config(tmp_path / "run.yaml", run_config(
        [tiny_scene], [val], training={**TINY_TRAINING, "epochs": 2, "select": select},
        predict=TINY_PREDICT)))
    run = tmp_path / "run"
    if select == "best":
        with pytest.raises(SlidemapError, match=r"no landslide pixel.*select: last"):
            train(config, run)
        assert not (run / "model.safetensors").exists()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, run)
    assert any(issubclass(w.category, SlidemapWarning) and "no landslide pixel" in str(w.message)
               for w in caught)
    assert (run / "model.safetensors").exists()


def test_a_run_never_writes_through_a_link_to_its_history(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """history.csv was written in place: a snapshot of the run folder by hard links (``cp -al``)
    had its history replaced by the next --overwrite run's and extended by a resume, while
    every other file of the snapshot kept the earlier run's."""
    config = load_config(write_config(tmp_path / "run.yaml", tiny_run(tiny_scene)))
    run, snapshot = tmp_path / "run", tmp_path / "snapshot"
    train_interrupted(config, run, monkeypatch)
    snapshot.mkdir()
    for path in run.iterdir():
        os.link(path, snapshot / path.name)
    kept = (snapshot / "history.csv").read_bytes()
    train(config, run, resume=True)
    train(config.changed(train=config.train.changed(seed=1)), run, overwrite=True)
    assert (snapshot / "history.csv").read_bytes() == kept
    assert [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()] == \
        ["epoch", "1", "2"]


@pytest.mark.parametrize("name", ["summary.json", "curves.png", "model.json"])
def test_a_file_a_run_writes_is_not_replaced_without_overwrite(
        tiny_scene: dict[str, Path], tmp_path: Path, name: str) -> None:
    """Only the weights and history.csv counted as an earlier run: a summary.json, curves.png
    or model.json already in --out (the user's own, or a run's whose weights were moved) was
    replaced without --overwrite."""
    config = load_config(write_config(tmp_path / "run.yaml", tiny_run(tiny_scene)))
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("mine\n")
    with pytest.raises(SlidemapError, match=rf"already holds a run \({name}\).*--overwrite"):
        train(config, run)
    assert (run / name).read_text() == "mine\n"
    train(config, run, overwrite=True)
    assert (run / "model.safetensors").exists()


def test_resume_reads_an_edited_history(tiny_scene: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank line left in history.csv (an editor's) is dropped on resume, where it raised
    ValueError with a traceback; a line that is no epoch's row is refused on one line."""
    config = load_config(write_config(tmp_path / "run.yaml", tiny_run(tiny_scene)))
    run = tmp_path / "run"
    train_interrupted(config, run, monkeypatch)
    history = run / "history.csv"
    rows = history.read_text()
    history.write_text(rows + "not a row\n")
    with pytest.raises(SlidemapError, match="not a row"):
        train(config, run, resume=True)
    history.write_text(rows + "\n")
    train(config, run, resume=True)
    assert [line.split(",")[0] for line in history.read_text().splitlines()] == \
        ["epoch", "1", "2"]


def test_an_interrupted_run_says_what_it_kept(tiny_scene: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C (or SIGTERM, which the CLI turns into it) in epoch 2 keeps epoch 1's checkpoint:
    the run says so and names --resume, where the CLI's last line alone read "no partial output
    was kept" and hid the resumable run."""
    config = load_config(write_config(tmp_path / "run.yaml", tiny_run(tiny_scene)))
    with caplog.at_level(logging.WARNING):
        train_interrupted(config, tmp_path / "run", monkeypatch, KeyboardInterrupt)
    assert "stopped after epoch 1" in caplog.text and "--resume" in caplog.text


def test_a_resumed_runs_wall_seconds_count_every_session(tiny_scene: dict[str, Path],
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.json's wall_seconds of a resumed run counted its last session alone (4 s beside
    12 s of train_seconds); it now carries the earlier sessions' like train_seconds. The clock
    ticks 1000 s a reading in the first session and 1 s in the second, so that the second's
    wall time alone is far below the run's training seconds."""
    clock = {"now": 0.0, "tick": 1000.0}

    def perf_counter() -> float:
        clock["now"] += clock["tick"]
        return clock["now"]

    config = load_config(write_config(tmp_path / "run.yaml", tiny_run(tiny_scene)))
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.time, "perf_counter", perf_counter)
        train_interrupted(config, run, monkeypatch)
        clock["tick"] = 1.0
        train(config, run, resume=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_seconds"] >= 1000
    assert summary["wall_seconds"] >= summary["train_seconds"]


def test_the_training_log_reads_as_written(tiny_scene: dict[str, Path], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """One epoch of one step is said in the singular ("1 epochs × 1 steps"), and the epoch line
    gives the learning rate as a person writes it (it printed 7.999999999999999e-05)."""
    raw = tiny_run(tiny_scene, epochs=1)
    raw["training"].update(windows_per_epoch=raw["training"]["batch_size"], lr=0.002)
    with caplog.at_level(logging.INFO, logger="slidemap"):
        train(load_config(write_config(tmp_path / "run.yaml", raw)), tmp_path / "run")
    lines = caplog.messages
    assert any(line.endswith("1 epoch × 1 step") for line in lines), lines
    epoch = next(line for line in lines if line.startswith("epoch 1"))
    lr = epoch.split("lr ")[1].split()[0]
    assert len(lr) <= 7 and float(lr) > 0, epoch


def test_a_run_from_scratch_over_a_fine_tuning_drops_its_figures(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """finetune.json gives a model's figures before and after fine-tuning: a run that replaces
    the fine-tuned model with --overwrite and starts from no model must not keep it."""
    run = tmp_path / "run"
    raw = tiny_run(tiny_scene, epochs=1)
    train(load_config(write_config(tmp_path / "first.yaml", raw)), run)
    (run / "finetune.json").write_text('{"init": "earlier.safetensors", "after": {"f1": 0.9}}')
    train(load_config(write_config(tmp_path / "plain.yaml", raw)), run, overwrite=True)
    assert (run / "model.safetensors").exists()
    assert not (run / "finetune.json").exists()


@pytest.mark.parametrize(("model", "training", "message"), [
    ({"name": "fcn", "width": 4}, {"batch_size": 1},
     r"model fcn reduces a 32 px window to 1×1 px.*step of 1 window \(training.batch_size 1\).*"
     r"raise training.tile to 64 or more, or raise training.batch_size$"),
    ({"name": "unet", "width": 4, "options": {"depth": 4}},
     {"tile": 16, "batch_size": 2, "windows_per_epoch": 3},
     r"\(the last batch of each epoch: 3 windows in batches of 2\).*tile to 32 or more, or make "
     r"training.windows_per_epoch a multiple of training.batch_size$"),
    ({"name": "fusion", "width": 4, "options": {"depth": 4, "instance_norm_levels": 5}},
     {"tile": 16}, r"step of 2 windows and cannot train: raise training.tile to 32 or more$"),
])
def test_a_step_normalisation_cannot_train_on_is_refused_before_training(
        tiny_scene: dict[str, Path], tmp_path: Path, model: dict, training: dict,
        message: str) -> None:
    """A window the network reduces to 1×1 px leaves batch norm one value per channel in a step
    of one window (instance norm in any step): torch stopped training with a ValueError
    traceback, for a remainder batch of one only at the end of the first epoch."""
    raw = {**tiny_run(tiny_scene, **{"epochs": 1, "windows_per_epoch": 2, "batch_size": 2,
                                     **training}), "model": model}
    config = load_config(write_config(tmp_path / "run.yaml", raw))
    with pytest.raises(SlidemapError, match=message):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("windows", "batch_size", "world", "smallest"), [
    (8, 4, 1, 4), (9, 4, 1, 1), (3, 8, 1, 3), (10, 4, 2, 1), (12, 4, 2, 2), (1, 4, 2, 1),
])
def test_smallest_batch_counts_the_remainder_and_the_split(windows: int, batch_size: int,
                                                           world: int, smallest: int) -> None:
    assert smallest_batch(windows, batch_size, world) == smallest


@pytest.mark.parametrize(("f1s", "select", "kept"), [
    ([0.5, 0.7, 0.7, 0.6], "best", 2),  # of epochs with equal F1, the earliest
    ([0.5, 0.7, 0.7, 0.6], "last", 4),
])
def test_the_epoch_kept_is_the_one_select_names(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        f1s: list[float], select: str, kept: int) -> None:
    """configs/README.md's rule for ``training.select``, epoch by epoch on set figures."""
    figures = iter(f1s)
    monkeypatch.setattr(loop, "evaluate_arrays", lambda *args: {"f1": next(figures)})
    train(load_config(write_config(tmp_path / "run.yaml", tiny_run(
        tiny_scene, epochs=4, select=select))), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["best_epoch"], summary["best_val_f1"]) == (kept, f1s[kept - 1])


def test_a_second_ddp_rank_logs_nothing(tiny_scene: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Under torchrun every message is rank 0's, but each rank also logged the network's
    parameter line, so a two-process run printed it twice."""
    monkeypatch.setattr(loop.ddp, "setup", lambda: loop.ddp.Ranks(rank=1, world=2))
    monkeypatch.setattr(loop.ddp, "wrap", lambda model, ranks: model)
    monkeypatch.setattr(loop.ddp, "mean", lambda value, ranks: value)
    config = load_config(write_config(tmp_path / "run.yaml", run_config(
        [tiny_scene], training={**TINY_TRAINING, "windows_per_epoch": 2},
        predict=TINY_PREDICT)))
    with caplog.at_level(logging.INFO, logger="slidemap"):
        train(config, tmp_path / "run")
    assert caplog.text == "", caplog.text
