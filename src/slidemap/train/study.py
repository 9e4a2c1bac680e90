"""Studies: a grid of training runs with one budget and seed, scored alike on held-out scenes.

A study YAML has ``base:``, a run config of the same schema as ``configs/*.yaml``, and ``grid:``,
one mapping or a list of them, each expanding to ``models`` × ``losses`` × ``variants`` ×
``seeds`` runs; ``swap: true`` adds every run again in the reverse direction (trained on the
held-out scenes, scored on the training ones). The held-out scenes are the base's ``data.val``.

Each run trains into DIR/<run>/ (with its full run config as ``config.yaml``) and keeps its scores
in ``result.json``, so an interrupted study continues where it stopped: scored runs are skipped, a
finished run is only scored, and a run cut off mid-training resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from slidemap.data.names import local_files
from slidemap.data.sources import load_arrays
from slidemap.errors import SlidemapError
from slidemap.evaluation.scorer import score_bundle
from slidemap.infer.runtime import autocast, prepare_for_inference
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, claim_file
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.models import count_parameters
from slidemap.schema.config import RunConfig, apply_overrides, parse_config, read_yaml
from slidemap.schema.values import file_of
from slidemap.train.checks import check_buildable, check_one_network
from slidemap.train.loop import CONTINUES, train

log = logging.getLogger(__name__)

BASE_VARIANT = "base"
LABEL = re.compile(r"^[A-Za-z0-9_.+]+$")
GRID_KEYS = ("models", "losses", "variants", "seeds", "swap")
METRICS = ("precision", "recall", "f1", "accuracy", "iou", "miou", "auc")
# (results.csv column, results.md heading) in table order.
COLUMNS = (
    ("run", "run"), ("model", "model"), ("loss", "loss"), ("variant", "variant"),
    ("seed", "seed"), ("direction", "direction"), ("parameters", "parameters"),
    ("train_s", "train time s"), ("precision", "precision"), ("recall", "recall"),
    ("f1", "F1"), ("accuracy", "accuracy"), ("iou", "IoU"), ("miou", "mIoU"), ("auc", "AUC"),
    ("ms_per_tile", "ms/tile"),
)
EXTRA_CSV = ("best_epoch", "pixels", "threads", "threshold")
# what a variant may not set: the grid axis whose label the run's row shows for it
AXIS_KEYS = {"loss": "losses", "model.name": "models", "training.seed": "seeds"}


@dataclass(frozen=True)
class StudyRun:
    """One cell of the grid: its labels and the complete run config it trains with."""

    name: str
    model: str
    loss: str
    variant: str
    seed: int
    direction: str
    raw: dict


@dataclass(frozen=True)
class Timing:
    """Inference timing: median of ``repeats`` batch-1 forwards of a ``tile``² tile."""

    tile: int = 256
    repeats: int = 10
    warmup: int = 3


@dataclass(frozen=True)
class Study:
    runs: tuple[StudyRun, ...]
    timing: Timing


def load_study(path: str | Path, overrides: Iterable[str] = ()) -> Study:
    """A study file; ``overrides`` (``key.path=value``) change its base run config."""
    path = Path(path)
    raw = read_yaml(path, "study")
    where = f"study {path}"
    if isinstance(raw.get("base"), str):  # the base as a run config file of its own
        raw = {**raw, "base": read_yaml(Path(raw["base"]), f"{where} base")}
    if overrides:
        if not isinstance(raw.get("base"), dict):
            raise SlidemapError(f"{where} needs a 'base:' run config for --set")
        raw = {**raw, "base": apply_overrides(raw["base"], overrides)}
    return parse_study(raw, where)


def parse_study(raw: dict[str, Any], where: str = "study") -> Study:
    """Expand and check every run up front, so a typo fails before hours of training."""
    unknown = sorted(set(raw) - {"base", "grid", "timing"})
    if unknown:
        raise SlidemapError(f"{where}: unknown key(s) {unknown}: use base, grid and timing")
    base = raw.get("base")
    if not isinstance(base, dict):
        raise SlidemapError(f"{where} needs a 'base:' run config (the schema of configs/*.yaml, "
                            "inline or the path of a config file)")
    grids = raw.get("grid")
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise SlidemapError(f"{where} needs a 'grid:' mapping (models, losses, variants, seeds, "
                            "swap) or a list of them")
    runs: dict[str, StudyRun] = {}
    for grid in grids:
        for run in expand_grid(base, grid, where):
            if run.name in runs and runs[run.name].raw != run.raw:
                raise SlidemapError(f"{where}: two grids define run {run.name} differently: "
                                    "rename a loss or variant label")
            runs[run.name] = run
    _check_labels(list(runs.values()), where)
    for run in runs.values():
        _check_run(run, where)
    return Study(tuple(runs.values()), _timing(raw.get("timing") or {}, where))


def expand_grid(base: dict, grid: dict, where: str) -> list[StudyRun]:
    """The runs of one grid block, in model, loss, variant, seed, direction order."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise SlidemapError(f"{where}: unknown grid key(s) {unknown}: valid ones are "
                            f"{list(GRID_KEYS)}")
    models = _labelled(grid.get("models"), {(base.get("model") or {}).get("name", "unet"): {}},
                       "models", where)
    default_loss = base.get("loss", {"bce": 1.0, "dice": 1.0})
    losses = _labelled(grid.get("losses"), {"+".join(default_loss): default_loss}, "losses",
                       where, names_are_specs=True)
    variants = {BASE_VARIANT: {}, **_labelled(grid.get("variants"), {}, "variants", where)}
    for label, overrides in variants.items():
        _check_variant(label, overrides, where)
    seeds = grid.get("seeds", [(base.get("training") or {}).get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SlidemapError(f"{where}: grid seeds must be a list of integers, e.g. [0, 1, 2]")
    swap = grid.get("swap", False)
    if not isinstance(swap, bool):
        raise SlidemapError(f"{where}: grid swap must be true or false")
    runs = []
    for model, model_overrides in models.items():
        for loss, loss_spec in losses.items():
            for variant, overrides in variants.items():
                for seed in seeds:
                    for direction in ("forward", "swapped") if swap else ("forward",):
                        name = f"{model}-{loss}-{variant}-s{seed}" + (
                            "-swapped" if direction == "swapped" else "")
                        raw = _run_config(base, name, model, model_overrides, loss_spec,
                                          overrides, seed, direction == "swapped",
                                          f"{where}: grid variant {variant}")
                        runs.append(StudyRun(name, model, loss, variant, seed, direction, raw))
    return runs


def _check_labels(runs: list[StudyRun], where: str) -> None:
    """Runs that share model, loss and variant labels (and direction) must differ only in their
    seed: results.md averages them over seeds as one configuration, so two grids that give one
    label to different losses, widths or overrides would be averaged together unseen."""
    first: dict[tuple[str, str, str, str], StudyRun] = {}
    for run in runs:
        key = (run.model, run.loss, run.variant, run.direction)
        other = first.setdefault(key, run)
        if _without_seed(other.raw) != _without_seed(run.raw):
            raise SlidemapError(f"{where}: runs {other.name} and {run.name} share the labels "
                                f"model {run.model}, loss {run.loss}, variant {run.variant} but "
                                "differ in more than the seed, and results.md would average "
                                "them as one configuration: give one another loss or variant "
                                "label")


def _without_seed(raw: dict) -> dict:
    """A run config without what differs between the seeds of one configuration."""
    out = {k: v for k, v in raw.items() if k != "name"}
    out["training"] = {k: v for k, v in (raw.get("training") or {}).items() if k != "seed"}
    return out


def _labelled(value: Any, default: dict, key: str, where: str,
              names_are_specs: bool = False) -> dict[str, Any]:
    """A grid axis as {label: value}: a mapping as is, a list of names as {name: {}}.

    For losses a listed name means that loss alone at weight 1.
    """
    if value is None:
        return default
    if isinstance(value, list):
        value = {str(n): ({str(n): 1.0} if names_are_specs else {}) for n in value}
    if not isinstance(value, dict) or not value:
        raise SlidemapError(f"{where}: grid {key} must be a non-empty list or mapping")
    for label, item in value.items():
        if not LABEL.match(str(label)) or (key == "variants" and label == BASE_VARIANT):
            raise SlidemapError(f"{where}: grid {key} label {label!r} must use only letters, "
                                "digits, _ . + (and 'base' is the variant without overrides)")
        overrides = key == "variants" and isinstance(item, list) and all(
            isinstance(line, str) for line in item)
        if not (isinstance(item, dict) or overrides):
            raise SlidemapError(f"{where}: grid {key}.{label} must be a mapping"
                                + (" or a list of key.path=value overrides"
                                   if key == "variants" else ""))
    return {str(k): v for k, v in value.items()}


def _check_variant(label: str, overrides: dict | list[str], where: str) -> None:
    """Refuse a variant that sets the loss, the architecture or the seed: the run's row is
    labelled by the grid's losses, models and seeds, so the variant's seed was silently replaced
    by the grid's (a run identical to the base under another name) and its loss trained under
    the base loss's label."""
    varied = _merge({}, overrides) if isinstance(overrides, dict) \
        else apply_overrides({}, overrides, f"{where}: grid variant {label}")
    for key, axis in AXIS_KEYS.items():
        node: Any = varied
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise SlidemapError(f"{where}: grid variant {label} sets {key}, which the grid's "
                                f"{axis} sets for every run: list it under grid {axis} instead")


def _run_config(base: dict, name: str, model: str, model_overrides: dict, loss: dict,
                overrides: dict | list[str], seed: int, swapped: bool, source: str) -> dict:
    """Base ← model ← loss ← variant overrides ← seed ← direction.

    A model entry's keys replace the base's (``options`` as a whole: they are per architecture),
    the loss replaces the base loss, and variants merge deeply (a mapping) or set keys (a list
    of ``key.path=value``, as ``--set`` does).
    """
    raw = copy.deepcopy(base)
    raw["model"] = {**(raw.get("model") or {}), **copy.deepcopy(model_overrides), "name": model}
    raw["loss"] = copy.deepcopy(loss)
    raw = _merge(raw, overrides) if isinstance(overrides, dict) \
        else apply_overrides(raw, overrides, source)
    raw["training"] = {**(raw.get("training") or {}), "seed": seed}
    if swapped:
        data = raw.get("data") or {}
        raw["data"] = {**data, "train": data.get("val"), "val": data.get("train")}
    raw["name"] = name
    return raw


def _merge(into: dict, overrides: dict) -> dict:
    """Deep merge of mappings; anything else in ``overrides`` replaces, ``loss`` included."""
    out = copy.deepcopy(into)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "loss":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_run(run: StudyRun, where: str) -> None:
    """Parse the config, build the loss and the model: errors name the run."""
    where = f"{where} run {run.name}"
    try:
        config = parse_config(run.raw, None)
    except SlidemapError as exc:
        raise SlidemapError(f"{where}: {exc}") from exc
    if not (config.val_scenes or config.val_patches):
        raise SlidemapError(f"{where}: a study scores on held-out data: give base data.val")
    check_one_network(config, where, "a study")
    check_buildable(config, where)


def _timing(raw: Any, where: str) -> Timing:
    if not isinstance(raw, dict) or set(raw) - {"tile", "repeats", "warmup"}:
        raise SlidemapError(f"{where}: timing takes tile, repeats and warmup, got {raw!r}")
    timing = Timing(**raw)
    if not all(isinstance(v, int) for v in vars(timing).values()) or timing.tile < 1 \
            or timing.repeats < 1 or timing.warmup < 0:
        raise SlidemapError(f"{where}: timing tile and repeats must be positive integers")
    return timing


def run_study(study: Study, out_dir: Path) -> list[dict]:
    """Train, score and time every run; rewrite results.csv/md after each with every run scored
    so far (this call's or an earlier one's), in grid order, so they show progress."""
    _check_files(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for number, run in enumerate(study.runs, 1):
        log.info(f"run {number}/{len(study.runs)}: {run.name}")
        run_one(run, out_dir / run.name, study.timing)
        rows = scored_rows(study, out_dir)
        write_results(rows, out_dir, study.timing)
    return rows


def scored_rows(study: Study, out_dir: Path) -> list[dict]:
    """The rows of the study's runs that have a result in ``out_dir``, in grid order."""
    paths = [out_dir / run.name / "result.json" for run in study.runs]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def run_one(run: StudyRun, run_dir: Path, timing: Timing) -> dict:
    """One study row: trained (or resumed, or skipped when finished), scored and timed."""
    _claim(run_dir, run.raw)
    result_path = run_dir / "result.json"
    if result_path.exists():
        log.info(f"{run.name}: already scored, skipped")
        return json.loads(result_path.read_text())
    config = parse_config(run.raw, run_dir / "config.yaml")
    if not (run_dir / "summary.json").exists():
        # Without a checkpoint, whatever a run cut off in its first epoch left is started over.
        resume = (run_dir / "checkpoint.safetensors").exists()
        train(config, run_dir, resume=resume, overwrite=not resume, how_to_go_on=CONTINUES)
    summary = json.loads((run_dir / "summary.json").read_text())
    bundle = load_model(run_dir / "model")
    scores = score_run(bundle, config)
    row = {
        "run": run.name, "model": run.model, "loss": run.loss, "variant": run.variant,
        "seed": run.seed, "direction": run.direction,
        "parameters": count_parameters(bundle.model), "train_s": summary["train_seconds"],
        **{k: scores[k] for k in METRICS},
        "ms_per_tile": time_per_tile(bundle.model, len(bundle.inputs.channels), timing,
                                     config.train.precision),
        "best_epoch": summary["best_epoch"], "pixels": scores["pixels"],
        "threads": torch.get_num_threads(), "threshold": bundle.threshold,
    }
    with atomic_path(result_path) as tmp:
        tmp.write_text(jsontext.dumps(row, indent=2) + "\n")
    return row


def _claim(run_dir: Path, raw: dict) -> None:
    """Write the run's config.yaml, or refuse a folder trained with a different config."""
    claim_file(run_dir / "config.yaml", yaml.safe_dump(raw, sort_keys=False), yaml.safe_load,
               f"{run_dir} holds a run with a different config: delete that folder or choose "
               "another --out")


def _check_files(study: Study) -> None:
    """Every local scene file must exist before the first run starts (a GDAL name such as
    ``/vsizip/...`` or a URL is looked up when the run opens it)."""
    for run in study.runs:
        config = parse_config(run.raw, None)
        for scene in (*config.train_scenes, *config.val_scenes):
            for path in local_files(scene.image, scene.mask, scene.dem, scene.aoi):
                if not file_of(path).exists():
                    raise SlidemapError(f"scene file {path} (run {run.name}) does not exist: "
                                        "paths are relative to the current directory")


def score_run(bundle: ModelBundle, config: RunConfig) -> dict[str, float]:
    """The one scorer over every labelled pixel of the run's held-out scenes and patches."""
    arrays = load_arrays(config.val_scenes, config.val_patches, bundle.inputs)
    return score_bundle(bundle, arrays, config.train.precision,
                        config.predict.batch_size).metrics()


@torch.inference_mode()
def time_per_tile(model: nn.Module, channels: int, timing: Timing, precision: str) -> float:
    """Median milliseconds of a batch-1 forward after warm-up, as prediction runs it."""
    model = prepare_for_inference(model)
    x = torch.randn(1, channels, timing.tile, timing.tile,
                    generator=torch.Generator().manual_seed(0))
    x = x.to(memory_format=torch.channels_last)
    times = []
    with autocast(precision):
        for step in range(timing.warmup + timing.repeats):
            start = time.perf_counter()
            model(x)
            if step >= timing.warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def write_results(rows: list[dict], out_dir: Path, timing: Timing) -> None:
    """results.csv (every field) and results.md (the table, plus mean ± std over seeds)."""
    fields = [c for c, _ in COLUMNS] + list(EXTRA_CSV)
    with atomic_path(out_dir / "results.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in fields} for row in rows)  # older rows lack some
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(results_markdown(rows, timing))


def results_markdown(rows: list[dict], timing: Timing) -> str:
    threads = sorted({row["threads"] for row in rows})
    thresholds = sorted({row.get("threshold") for row in rows}, key=str)
    at = (f"threshold {', '.join(str(t) for t in thresholds)}" if None not in thresholds
          else "each run's predict.threshold")
    lines = [
        "# Study results",
        "",
        "Scores of each run's saved model on its held-out scenes: one confusion matrix over all "
        f"valid pixels, at {at}. With `training.select: last` that model is the last epoch "
        "and the scores are held-out figures; with `best` it is the epoch with the highest F1 "
        "on those same scenes, and the scores are optimistic by that choice. *forward* trains on "
        "`data.train` and scores `data.val`; *swapped* is the reverse. Train time counts the "
        "epochs with their validation passes. ms/tile: median of "
        f"{timing.repeats} batch-1 forwards of a {timing.tile}×{timing.tile} tile after "
        f"{timing.warmup} warm-up calls, on {', '.join(map(str, threads))} CPU thread(s), in "
        "the run's precision.",
        "",
        *_table([h for _, h in COLUMNS], [[_cell(c, row[c]) for c, _ in COLUMNS]
                                          for row in rows]),
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["loss"], row["variant"], row["direction"]),
                          []).append(row)
    if any(len(group) > 1 for group in groups.values()):
        keys = (*METRICS, "ms_per_tile")
        headings = ["model", "loss", "variant", "direction", "seeds",
                    *[dict(COLUMNS)[k] for k in keys]]
        body = [[*key, str(len(group)), *[_mean_std(k, [r[k] for r in group]) for k in keys]]
                for key, group in groups.items()]
        lines += ["", "## Mean ± std over seeds", "",
                  "Sample standard deviation (n - 1); a single seed shows no ±.", "",
                  *_table(headings, body)]
    return "\n".join(lines) + "\n"


def _table(headings: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings),
            *["| " + " | ".join(cells) + " |" for cells in body]]


def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"  # a figure with no value (AUC with one class), null in result.json
    if key == "parameters":
        return f"{value:,}"
    if key == "train_s":
        return f"{value:.0f}"
    if key == "ms_per_tile":
        return f"{value:.1f}"
    if key in METRICS:
        return f"{value:.4f}"
    return str(value)


def _mean_std(key: str, values: list[float | None]) -> str:
    known = [v for v in values if v is not None and math.isfinite(v)]
    if len(known) < len(values):
        return "–"  # a seed without the figure: no mean that hides it
    mean = _cell(key, statistics.fmean(known))
    return mean if len(known) < 2 else f"{mean} ± {_cell(key, statistics.stdev(known))}"
