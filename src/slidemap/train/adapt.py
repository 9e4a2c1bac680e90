"""Scene adaptation (``slidemap predict --adapt``): the model fine-tuned on the scene it maps.

The Landslide4Sense winner's progressive pseudo-labels, at prediction time. The model predicts
pieces ("chunks") of the target scene; the pixels it is most confident about become labels and
the rest is ignored, and a copy of the network trains on random windows of those chunks. Each
round predicts the chunks again with the adapted copy and widens the confident set (``keep``:
first round's, last round's), as the model learns the scene. No label of the target is read.

Confidence is ranked within each predicted class (class-balanced, as in CBST self-training):
a round keeps the fraction ``keep`` of the pixels predicted landslide (p ≥ the model's
threshold) with the highest p, and that fraction of those predicted background with the lowest
p. Fixed cut-offs (p ≥ 0.9, p ≤ 0.1) depend on calibration: the protocol's fold models, trained
with BCE + Dice, put little background below 0.1, so such labels would be nearly all landslide
and teach the copy to see slides everywhere.

Bounded three ways: ``minutes`` of wall time for the whole adaptation (loading the model and
reading the chunks, then the rounds, predicting the chunks and training: each round trains for
its share of the time left after its prediction, and a round starts only if its prediction,
timed as the last one, ends within the bound; checked between steps),
``windows`` training windows in all, and only as many chunks as half of predict's memory budget
holds. The copy keeps the model's normalisation statistics (inputs mean
what they meant in training); its batch-norm statistics follow the scene as it trains.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window
from rich.progress import Progress

from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.dataset import RandomWindows, SceneArrays
from slidemap.data.names import DatasetName, absolute_name, display_name
from slidemap.data.normalization import BandStats
from slidemap.data.scene import IGNORE, Scene
from slidemap.data.windows import flipped, random_windows
from slidemap.errors import SlidemapError, SlidemapWarning, UsageError
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.predict import working_factor
from slidemap.infer.stream import check_terrain_halo
from slidemap.io.modelfile import ModelBundle, load_model, model_paths
from slidemap.io.provenance import sha256_file
from slidemap.train.loop import train_steps
from slidemap.train.losses import build_loss
from slidemap.train.selftrain import Labeller, Target, pseudo_round

log = logging.getLogger(__name__)

CHUNK_SIDE = 512  # working px of the scene per chunk, besides its context margin
MEMORY_SHARE = 0.5  # of predict's memory budget, for the chunks and their copies
WEIGHT_DECAY = 1e-4
FALLBACK_LOSS = {"bce": 1.0, "dice": 1.0}  # for a model file that does not record its loss


@dataclass(frozen=True)
class AdaptOptions:
    """How a model adapts to a scene; the defaults bound it to a few minutes on a laptop CPU.

    ``tile`` None: the model's training window (its provenance), else its prediction window.
    ``save``: where to write the adapted model file (never the input's place).
    """

    minutes: float = 3.0
    windows: int = 512
    rounds: int = 3
    keep: tuple[float, float] = (0.4, 0.8)
    lr: float = 2e-4
    batch_size: int = 8
    tile: int | None = None
    min_valid: float = 0.25
    seed: int = 0
    save: Path | None = None

    def __post_init__(self) -> None:
        self._check_types()
        first, last = self.keep
        problems = [
            (not (math.isfinite(self.minutes) and self.minutes > 0),
             f"--adapt-minutes {self.minutes:g} must be a time above 0, e.g. 3"),
            (self.rounds < 1, f"adaptation rounds {self.rounds} must be 1 or more, e.g. 3"),
            (self.batch_size < 1, f"adaptation batch size {self.batch_size} must be 1 or more"),
            (self.windows < self.rounds * self.batch_size,
             f"--adapt-windows {self.windows} is fewer than one batch of {self.batch_size} per "
             f"round ({self.rounds} rounds): give at least {self.rounds * self.batch_size}"),
            (not 0 < first <= last <= 1,
             f"adaptation keep {first:g} → {last:g} must grow (or stay) within (0, 1], e.g. "
             "0.4 → 0.8: the fraction of each predicted class kept as pseudo-labels"),
            (not (math.isfinite(self.lr) and self.lr > 0),
             f"adaptation learning rate {self.lr:g} must be above 0, e.g. 2e-4"),
            (self.tile is not None and self.tile < 16,
             f"adaptation window {self.tile} px is too small: use 16 px or more"),
            (not 0 < self.min_valid <= 1,
             f"adaptation min_valid {self.min_valid:g} must lie in (0, 1]"),
        ]
        for failed, message in problems:
            if failed:  # a value of the wrong form: exit 2, as --threshold and --scales do
                raise UsageError(message)

    def _check_types(self) -> None:
        """Text, a bool or a fraction where a number or count goes is refused naming the field,
        before the range checks compare it (``minutes="3"``: "must be real number, not str")."""
        wholes = ("windows", "rounds", "batch_size", "seed",
                  *(("tile",) if self.tile is not None else ()))
        for name in ("minutes", "lr", "min_valid", *wholes):
            value = getattr(self, name)
            kind = int if name in wholes else int | float
            if isinstance(value, bool) or not isinstance(value, kind):
                raise UsageError(f"adaptation {name} must be a "
                                 f"{'whole number' if name in wholes else 'number'}, not "
                                 f"{value!r:.40}")
        if not (isinstance(self.keep, tuple | list) and len(self.keep) == 2 and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in self.keep)):
            raise UsageError(f"adaptation keep must be two fractions, e.g. (0.4, 0.8), not "
                             f"{self.keep!r:.40}")

    def portions(self) -> list[float]:
        """Each round's fraction kept, from the first to the last, evenly spaced."""
        first, last = self.keep
        if self.rounds == 1:
            return [first]
        return [round(first + (last - first) * r / (self.rounds - 1), 4)
                for r in range(self.rounds)]

    def settings(self) -> dict:
        """The options as recorded in outputs (the save path is recorded apart)."""
        return {k: v for k, v in asdict(self).items() if k != "save"} | {
            "keep": list(self.keep)}


@dataclass
class Adapted:
    """The adapted copy of a model, and how it came about (for provenance)."""

    bundle: ModelBundle
    record: dict


def adapt_model(bundle: ModelBundle, chunks: list[SceneArrays], options: AdaptOptions,
                predict: PredictOptions, progress: Progress | None = None,
                started: float | None = None) -> Adapted:
    """Progressive pseudo-label rounds on ``chunks`` (unlabelled: their target marks only where
    labels may be drawn) with a copy of ``bundle``'s network; ``bundle`` is left as it was.
    ``started``: when the adaptation began (its clock reading), which the time bound and the
    record's seconds count from; by default now."""
    if bundle.members > 1:
        raise SlidemapError(f"--adapt fine-tunes one network, and {bundle.path} is an ensemble "
                            f"of {bundle.members}: pass --model with a single network")
    started = time.perf_counter() if started is None else started
    deadline = started + 60 * options.minutes
    torch.manual_seed(options.seed)
    model = copy.deepcopy(bundle.model)
    adapted = replace(bundle, model=model, path=None)
    stats = BandStats(bundle.mean, bundle.std)
    tile = options.tile or training_value(bundle, "tile") or bundle.predict.tile
    loss_spec = recorded_loss(bundle)
    loss_fn = build_loss(loss_spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    counter = _Counter()
    task = progress.add_task("adapt", total=options.windows) if progress else None

    def advance() -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=counter.windows)

    rounds: list[dict] = []
    confident = True
    portions = options.portions()
    predicting = 0.0  # seconds the last prediction of the chunks took
    for number, portion in enumerate(portions):
        if time.perf_counter() + predicting >= deadline:  # it would end past the bound
            break
        # the map's decision threshold and scales, so a pixel the map calls landslide is not
        # taught to the copy as background (--tta is left out: 8 passes would eat the budget)
        predictor = Predictor([adapted], precision=predict.precision, scales=predict.scales,
                              threshold=predict.threshold)
        before_prediction = time.perf_counter()
        pseudo, row = pseudo_round(predictor, [Target(c, None) for c in chunks],
                                   class_balanced(portion, predictor.threshold,
                                                  options.seed * 1000 + number), predict)
        now = time.perf_counter()
        predicting = now - before_prediction
        row = {"round": number + 1, "keep": portion, **row}
        usable = [p for p in pseudo if random_windows(p.valid, tile, 1, options.min_valid,
                                                      np.random.default_rng(0))]
        if not usable:
            rounds.append({**row, "windows": 0,
                           "seconds": round(time.perf_counter() - started, 1)})
            confident = False
            break
        before = counter.windows
        windows = RandomWindows(usable, stats, tile, options.batch_size, options.min_valid,
                                True, options.seed * 1000 + number)
        # this round's share of the time left: a slow prediction shortens its training, not
        # the bound (with fixed shares, each round found its deadline gone)
        losses = train_steps(
            model, _bounded(windows, options.batch_size, counter,
                            options.windows * (number + 1) // len(portions),
                            now + (deadline - now) / (len(portions) - number)),
            loss_fn, optimizer, scheduler, predict.precision, advance)
        rounds.append({**row, "windows": counter.windows - before,
                       "loss": float(np.mean(losses)) if losses else None,
                       "seconds": round(time.perf_counter() - started, 1)})
        log.info(f"adapt round {number + 1}: keep {portion:g} of each class, "
                 f"{100 * row['kept_fraction']:.0f} % of the scene kept, "
                 f"{counter.windows - before} windows, {time.perf_counter() - started:.0f} s")
    model.eval()
    stopped_by = "windows" if counter.windows == options.windows else \
        "time" if confident else "no confident window"
    record = {"settings": options.settings(), "tile": tile, "loss": loss_spec,
              "chunks": len(chunks),
              "chunk_pixels": int(sum(int(c.valid.sum()) for c in chunks)),
              "windows": counter.windows, "trained": counter.windows > 0,
              "seconds": round(time.perf_counter() - started, 1),
              "stopped_by": stopped_by, "rounds": rounds}
    adapted.provenance = {**bundle.provenance, "adapted": record}
    return Adapted(adapted, record)


def class_balanced(portion: float, decision: float, seed: int = 0) -> Labeller:
    """Labels for the fraction ``portion`` of the pixels of each predicted class (landslide:
    p ≥ ``decision``) that are most confident, ranked over all targets together (a chunk
    without a predicted slide gives none); 255 elsewhere and where not valid. Ties are broken
    at random (``seed``), so the labels of equally sure pixels spread over the targets."""
    def label(probs: list[np.ndarray], valids: list[np.ndarray]) -> list[np.ndarray]:
        # Ranks, not cut-offs: probabilities on a few steps tie by the thousand, and a cut-off
        # at a tied value kept far more than the portion (73 % of a scene at 40 %).
        where = [np.flatnonzero(v & np.isfinite(p)) for p, v in zip(probs, valids, strict=True)]
        values = np.concatenate([p.ravel()[w] for p, w in zip(probs, where, strict=True)])
        chosen = np.full(values.size, IGNORE, dtype=np.uint8)
        tiebreak = np.random.default_rng(seed).random(values.size)
        for cls, members, order in ((1, values >= decision, -values), (0, values < decision,
                                                                        values)):
            index = np.flatnonzero(members)
            keep = math.ceil(portion * index.size)
            chosen[index[np.lexsort((tiebreak[index], order[index]))[:keep]]] = cls
        out = []
        for prob, part, picked in zip(probs, where, np.split(chosen, np.cumsum(
                [w.size for w in where])[:-1]), strict=True):
            labels = np.full(prob.shape, IGNORE, dtype=np.uint8)
            labels.ravel()[part] = picked
            out.append(labels)
        return out

    return label


@dataclass
class _Counter:
    windows: int = 0


def _bounded(windows: RandomWindows, batch_size: int, counter: _Counter, until: int,
             deadline: float) -> Iterator[dict[str, np.ndarray]]:
    """Batches of fresh random windows until ``counter`` reaches ``until`` windows or time is
    up (checked before each batch, so a round ends at most one step late)."""
    epoch = 0
    while counter.windows < until and time.perf_counter() < deadline:
        epoch += 1
        batch = next(windows.epoch(epoch, batch_size))
        take = min(len(batch["x"]), until - counter.windows)
        counter.windows += take
        yield {k: v[:take] for k, v in batch.items()}


def training_value(bundle: ModelBundle, key: str) -> int | None:
    """A ``training:`` value recorded in the model file's provenance, if it is there."""
    value = bundle.provenance.get("config", {}).get("training", {}).get(key)
    return value if isinstance(value, int) else None


def recorded_loss(bundle: ModelBundle) -> dict:
    """The loss the model was trained with (its provenance), so adapting pulls as training did."""
    loss = bundle.provenance.get("config", {}).get("loss")
    return loss if isinstance(loss, dict) and loss else dict(FALLBACK_LOSS)


def scene_chunks(image: DatasetName, dem: DatasetName | None, bundle: ModelBundle,
                 memory_mb: int | None, seed: int = 0) -> list[SceneArrays]:
    """Up to as many chunks of ``CHUNK_SIDE`` working px (with a margin of context read around
    them, never labelled) as the memory share holds, drawn at random among those with data;
    their targets are 0 where labels may be drawn and 255 elsewhere."""
    spec = bundle.inputs
    margin = bundle.predict.overlap
    side = CHUNK_SIDE + 2 * margin
    per_chunk = side * side * (8 * len(spec.channels) + 16)  # x, its normalised copy, p, labels
    most = MemoryBudget.of(memory_mb).share(MEMORY_SHARE) // per_chunk
    if most < 1:
        raise SlidemapError(f"a chunk of {side} px of {len(spec.channels)} channels needs "
                            f"{per_chunk / 2**20:.0f} MB of the adaptation's share of the memory "
                            "budget: raise --memory-mb")
    chunks: list[SceneArrays] = []
    with Scene(image, dem=dem, warn_dem=False) as scene:  # predict warns once
        factor = working_factor(scene, spec, image)
        # a chunk's DEM halo (relief within kilometres) may be the whole scene: predict checks
        # its own windows, but the chunks are read before it runs
        check_terrain_halo(scene, spec, factor, (side * factor, side * factor),
                           MemoryBudget.of(memory_mb), option=None)
        height, width = -(-scene.height // factor), -(-scene.width // factor)
        origins = [(r, c) for r in range(0, height, CHUNK_SIDE)
                   for c in range(0, width, CHUNK_SIDE)]
        order = np.random.default_rng(seed).permutation(len(origins))
        for index in order:
            if len(chunks) == most:
                break
            row, col = origins[index]
            chunk = _read_chunk(scene, factor, (height, width), row, col, margin, spec)
            if chunk is not None:
                chunks.append(chunk)
        if not chunks:
            raise SlidemapError(scene.dem_void() or f"image {image} has no valid pixel to adapt "
                                "on (all nodata): check its nodata value and the DEM coverage")
    return chunks


def _read_chunk(scene: Scene, factor: int, shape: tuple[int, int], row: int, col: int,
                margin: int, spec: InputSpec) -> SceneArrays | None:
    """The chunk at working ``row``, ``col`` with its margin, or None if it holds no data;
    north up, as the map's windows are fed to the network (``Predictor.facing``), so that the
    copy learns the ground as the map shows it to it."""
    height, width = shape
    top, left = max(0, row - margin), max(0, col - margin)
    bottom = min(height, row + CHUNK_SIDE + margin)
    right = min(width, col + CHUNK_SIDE + margin)
    window = Window(left * factor, top * factor, min((right - left) * factor, scene.width
                                                     - left * factor),
                    min((bottom - top) * factor, scene.height - top * factor))
    if not scene.any_valid(window, factor):
        return None
    sample = read_inputs(scene, window, spec, factor)
    x = stack_channels(sample, spec)
    readable = sample["valid"] & np.isfinite(x).all(axis=0)
    core = np.zeros(readable.shape, dtype=bool)
    core[row - top:row - top + CHUNK_SIDE, col - left:col - left + CHUNK_SIDE] = True
    target = np.where(readable & core, 0, IGNORE).astype(np.uint8)
    if not (target == 0).any():
        return None
    flips = scene.flips
    return SceneArrays(f"{display_name(scene.image_path)} r{row} c{col}",
                       np.ascontiguousarray(flipped(x, flips)),
                       np.ascontiguousarray(flipped(target, flips)),
                       inputs_valid=np.ascontiguousarray(flipped(readable, flips)))


def block_chunk(scene: SceneArrays, top: int, bottom: int, left: int, right: int,
                margin: int) -> SceneArrays:
    """Rows ``top:bottom``, columns ``left:right`` of an unlabelled scene's arrays as a chunk,
    with ``margin`` px of context around them (read, never labelled), predicted north up as
    the scene (``SceneArrays.flips``)."""
    height, width = scene.target.shape
    rows = slice(max(0, top - margin), min(height, bottom + margin))
    cols = slice(max(0, left - margin), min(width, right + margin))
    readable = scene.readable[rows, cols]
    core = np.zeros(readable.shape, dtype=bool)
    core[top - rows.start:bottom - rows.start, left - cols.start:right - cols.start] = True
    target = np.where(readable & core, 0, IGNORE).astype(np.uint8)
    return SceneArrays(scene.name, scene.x[:, rows, cols], target, inputs_valid=readable,
                       flips=scene.flips)


def adapt_to_scene(model: Path, image: DatasetName, dem: DatasetName | None,
                   options: AdaptOptions, predict: PredictOptions,
                   progress: Progress | None = None) -> Adapted:
    """``model`` adapted to the scene ``image`` (+ ``dem``): chunks read within predict's memory
    budget, then :func:`adapt_model`; the record names the model it started from. The time
    bound covers it all: reading a large scene's chunks is part of what --adapt-minutes caps."""
    started = time.perf_counter()
    bundle = load_model(model)
    chunks = scene_chunks(image, dem, bundle, predict.memory_mb, options.seed)
    adapted = adapt_model(bundle, chunks, options, predict, progress, started)
    # named absolutely, as provenance names the model: report finds them from any folder;
    # the scene too, whose imagery the copy learnt from (slidemap.train.lineage reads it)
    adapted.record = {"from": absolute_name(model),
                      "from_sha256": sha256_file(model_paths(model)[0]),
                      "image": absolute_name(image), **adapted.record}
    if options.save is not None:
        adapted.record["saved_as"] = absolute_name(model_paths(options.save)[0])
    adapted.bundle.provenance["adapted"] = adapted.record
    if not adapted.record["trained"]:
        warnings.warn(untrained_message(adapted.record), SlidemapWarning, stacklevel=2)
    return adapted


def untrained_message(record: dict) -> str:
    """Why an adaptation trained no window, and what to change: its copy is the model as it
    was, so the map is the unadapted one, which the user asked not to get."""
    if record["stopped_by"] == "no confident window":
        settings = record["settings"]
        why = (f"no piece of the scene held a {record['tile']} px window with "
               f"{100 * settings['min_valid']:g} % of its pixels confidently predicted")
    elif not record["rounds"]:  # the bound went on setting up (reading the chunks, torch)
        why = (f"--adapt-minutes {record['settings']['minutes']:g} ran out before the scene "
               f"was predicted for pseudo-labels (setting up took {record['seconds']:g} s): "
               "raise it")
    else:
        why = (f"predicting the scene for pseudo-labels took the whole --adapt-minutes "
               f"{record['settings']['minutes']:g}: raise it")
    return f"--adapt trained no window ({why}); the map is the unadapted model's"


def adaptation_tags(record: dict) -> dict[str, str]:
    """Provenance tags saying that a map comes from an adapted model, and how it adapted."""
    settings = record["settings"]
    summary = {"rounds": [{k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in row.items()} for row in record["rounds"]],
               **{k: record[k] for k in ("windows", "trained", "seconds", "stopped_by",
                                         "chunks", "chunk_pixels", "tile", "loss")},
               "minutes": settings["minutes"], "max_windows": settings["windows"],
               "keep": settings["keep"], "lr": settings["lr"]}
    tags = {"SLIDEMAP_ADAPTED": json.dumps(summary, separators=(",", ":"))}
    if "saved_as" in record:
        tags["SLIDEMAP_ADAPTED_MODEL"] = record["saved_as"]
    return tags
