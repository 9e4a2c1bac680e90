"""Studies: a grid of tiny runs trained, scored, timed, tabulated, and continued when rerun."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slidemap.cli import app
from slidemap.errors import SlidemapError
from slidemap.train import study as study_module
from slidemap.train.study import (
    COLUMNS,
    METRICS,
    Timing,
    expand_grid,
    load_study,
    parse_study,
    results_markdown,
    run_study,
)


def tiny_study(scene: dict[str, Path], **grid: object) -> dict:
    """unet × unetpp at width 4, bce × dice, one epoch of 8 windows of 32 px each."""
    paths = {k: str(v) for k, v in scene.items()}
    base = {
        "name": "tiny-study",
        "data": {"train": [paths], "val": [paths]},
        "inputs": {"image_bands": [1, 2, 3], "dem": True, "slope": True},
        "model": {"width": 4, "options": {"depth": 2}},
        "training": {"epochs": 1, "batch_size": 4, "tile": 32, "windows_per_epoch": 8,
                     "precision": "fp32", "seed": 0},
        "predict": {"tile": 32, "overlap": 8, "batch_size": 4},
    }
    return {"base": base,
            "grid": {"models": ["unet", "unetpp"],
                     "losses": {"bce": {"bce": 1}, "dice": {"dice": 1}}, **grid},
            "timing": {"tile": 32, "repeats": 2, "warmup": 1}}


def read_rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_study_trains_scores_and_continues(tiny_scene: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(tiny_study(tiny_scene)))
    out = tmp_path / "study"
    rows = run_study(load_study(config), out)

    names = ["unet-bce-base-s0", "unet-dice-base-s0", "unetpp-bce-base-s0",
             "unetpp-dice-base-s0"]
    assert [r["run"] for r in rows] == names
    written = read_rows(out)
    assert [r["run"] for r in written] == names
    for row in written:
        for key in (*METRICS, "ms_per_tile", "train_s"):
            assert math.isfinite(float(row[key])), (row["run"], key)
        assert int(row["parameters"]) > 0 and float(row["ms_per_tile"]) > 0
        assert row["direction"] == "forward" and row["variant"] == "base"
    markdown = (out / "results.md").read_text()
    assert "| " + " | ".join(h for _, h in COLUMNS) + " |" in markdown
    assert sum(line.startswith("| unet-") or line.startswith("| unetpp-")
               for line in markdown.splitlines()) == 4
    assert json.loads((out / names[0] / "result.json").read_text()) == rows[0]
    # Every run folder holds a config that `slidemap train` accepts as it is.
    assert yaml.safe_load((out / names[0] / "config.yaml").read_text())["loss"] == {"bce": 1}

    # Rerun through the CLI: every run is already scored, so nothing trains.
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study_module, "train", no_training)
    result = CliRunner().invoke(app, ["study", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_rows(out) == written

    # A trained but unscored run is only scored; one cut off after its checkpoint resumes.
    (out / names[1] / "result.json").unlink()
    (out / names[2] / "result.json").unlink()
    (out / names[2] / "summary.json").unlink()
    # One cut off in its first epoch, before any checkpoint, starts over.
    (out / names[3] / "result.json").unlink()
    (out / names[3] / "summary.json").unlink()
    (out / names[3] / "checkpoint.safetensors").unlink()
    calls = []
    monkeypatch.undo()
    real_train = study_module.train

    def spy(config: object, run_dir: Path, resume: bool, overwrite: bool,
            how_to_go_on: str) -> Path:
        calls.append((run_dir.name, resume))
        assert "--resume" not in how_to_go_on  # study continues on a plain rerun
        return real_train(config, run_dir, resume=resume, overwrite=overwrite,
                          how_to_go_on=how_to_go_on)

    monkeypatch.setattr(study_module, "train", spy)
    rows = run_study(load_study(config), out)
    assert calls == [(names[2], True), (names[3], False)]
    assert (out / names[2] / "summary.json").exists()
    assert len(read_rows(out)) == 4

    # The table written after the first run already holds the runs an earlier call scored.
    (out / names[0] / "result.json").unlink()
    tables: list[list[str]] = []
    real_write = study_module.write_results
    monkeypatch.setattr(study_module, "write_results", lambda rows, *args: (
        tables.append([r["run"] for r in rows]), real_write(rows, *args)))
    run_study(load_study(config), out)
    assert tables[0] == names


def test_changed_config_refuses_to_reuse_a_run_folder(tiny_scene: dict[str, Path],
                                                      tmp_path: Path) -> None:
    raw = tiny_study(tiny_scene)
    raw["grid"] = {"models": ["unet"], "losses": ["bce"]}
    out = tmp_path / "study"
    run_study(parse_study(raw), out)
    raw["base"]["training"]["epochs"] = 2
    with pytest.raises(SlidemapError, match="different config"):
        run_study(parse_study(raw), out)


def test_grid_expands_variants_seeds_and_swapped_direction(tiny_scene: dict[str, Path]) -> None:
    raw = tiny_study(tiny_scene, variants={"mixup": {"training": {"mixup": 0.4}}},
                     seeds=[0, 1], swap=True)
    runs = expand_grid(raw["base"], raw["grid"], "study")
    assert len(runs) == 2 * 2 * 2 * 2 * 2
    run = next(r for r in runs if r.name == "unetpp-dice-mixup-s1-swapped")
    assert run.raw["model"] == {"name": "unetpp", "width": 4, "options": {"depth": 2}}
    assert run.raw["loss"] == {"dice": 1}
    assert run.raw["training"]["mixup"] == 0.4 and run.raw["training"]["seed"] == 1
    assert run.raw["data"]["train"] == raw["base"]["data"]["val"]
    base_run = next(r for r in runs if r.name == "unet-bce-base-s0")
    assert "mixup" not in base_run.raw["training"]
    # Several grid blocks: one study, runs shared between blocks are listed once.
    raw["grid"] = [{"models": ["unet"], "losses": ["bce", "dice"]},
                   {"models": {"unet": {}, "fcn": {"options": {}}}, "losses": ["bce"]}]
    study = parse_study(raw)
    assert [r.name for r in study.runs] == ["unet-bce-base-s0", "unet-dice-base-s0",
                                            "fcn-bce-base-s0"]


@pytest.mark.parametrize("second", [
    {"models": ["unet"], "losses": {"bce": {"wbce": 1}}, "seeds": [1]},
    {"models": {"unet": {"width": 8}}, "losses": ["bce"], "seeds": [1]},
    {"models": ["unet"], "losses": ["bce"], "variants": {"fast": ["training.lr=0.004"]},
     "seeds": [1]},
])
def test_one_label_for_two_configurations_is_refused(tiny_scene: dict[str, Path],
                                                     second: dict) -> None:
    """results.md averages a configuration's seeds: a label that names other losses, widths or
    overrides in another grid block would be averaged with them unseen."""
    raw = tiny_study(tiny_scene)
    raw["grid"] = [{"models": ["unet"], "losses": ["bce"],
                    "variants": {"fast": ["training.lr=0.003"]}, "seeds": [0]}, second]
    with pytest.raises(SlidemapError, match="differ in more than the seed"):
        parse_study(raw)
    raw["grid"][1] = {**raw["grid"][0], "seeds": [1, 2]}  # the same runs, more seeds: fine
    assert len(parse_study(raw).runs) == 6


@pytest.mark.parametrize(("grid", "message"), [
    ({"models": ["nonet"]}, "nonet"),
    ({"losses": {"x": {"nope": 1}}}, "nope"),
    ({"modles": ["unet"]}, "modles"),
    ({"models": {"fcn": {"options": {"depth": 2}}}}, "options"),
    ({"variants": {"base": {}}}, "base"),
    ({"seeds": 0}, "seeds"),
    # a row is labelled by the grid's seed, loss and model: a variant's own ones trained under
    # another label (its seed silently replaced by the grid's)
    ({"variants": {"seed5": ["training.seed=5"]}}, "variant seed5 sets training.seed"),
    ({"variants": {"focal": {"loss": {"focal": 1.0}}}}, "variant focal sets loss"),
    ({"variants": {"fcn": {"model": {"name": "fcn"}}}}, "variant fcn sets model.name"),
    # only slidemap train trains an ensemble: refused at the first run, naming other commands
    ({"variants": {"pair": ["training.members=2"]}}, "run unet-bce-pair-s0: training.members 2 "
                                                     ".* a study trains one network per run"),
    # an override list of the study file was blamed on --set, which the user never passed
    ({"variants": {"fast": ["training.lr"]}}, "^study: grid variant fast: 'training.lr' must be "
                                              "key.path=value"),
    ({"variants": {"fast": ["training.lr=[1"]}}, "^study: grid variant fast: training.lr: '\\[1' "
                                                 "is not a YAML value"),
    # the later of two kept silently, as --set and a config file no longer do
    ({"variants": {"fast": ["training.lr=1", "training.lr=2"]}},
     r"^study: grid variant fast: training\.lr is set twice \(1 and 2\): keep one"),
    ({"variants": {"deep": ["training.epochs.x=1"]}},
     "^study: grid variant deep: training.epochs.x: training.epochs is not a mapping"),
])
def test_bad_study_fails_before_training(tiny_scene: dict[str, Path], grid: dict,
                                         message: str) -> None:
    raw = tiny_study(tiny_scene)
    raw["grid"].update(grid)
    with pytest.raises(SlidemapError, match=message):
        parse_study(raw)


def test_markdown_adds_mean_and_std_over_seeds() -> None:
    def row(seed: int, f1: float) -> dict:
        return {"run": f"unet-bce-base-s{seed}", "model": "unet", "loss": "bce",
                "variant": "base", "seed": seed, "direction": "forward", "parameters": 1000,
                "train_s": 12.0, **dict.fromkeys(METRICS, 0.5), "f1": f1, "ms_per_tile": 3.0,
                "best_epoch": 1, "pixels": 10, "threads": 1}

    text = results_markdown([row(0, 0.6), row(1, 0.8)], Timing())
    assert "## Mean ± std over seeds" in text
    assert "| unet | bce | base | forward | 2 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | " \
           "0.7000 ± 0.1414 |" in text
    assert "Mean ± std" not in results_markdown([row(0, 0.6)], Timing())
    # AUC with one class is NaN in memory and null once result.json is read back.
    missing = [{**row(0, 0.6), "auc": float("nan")}, {**row(1, 0.8), "auc": None}]
    text = results_markdown(missing, Timing())
    assert "nan" not in text and "None" not in text
    assert "| unet | bce | base | forward | 2 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | " \
           "0.7000 ± 0.1414 |" in text  # the other figures keep their mean and spread
    assert text.count("| – |") >= 1
    # The text names the threshold the scores were counted at, not a fixed 0.5.
    assert "at threshold 0.6." in results_markdown([{**row(0, 0.6), "threshold": 0.6}], Timing())
    assert "each run's predict.threshold" in results_markdown([row(0, 0.6)], Timing())

