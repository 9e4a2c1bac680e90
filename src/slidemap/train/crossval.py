"""``slidemap crossval``: a recipe, and optionally a baseline, through spatial cross-validation.

Every labelled scene of ``data.train`` is cut into blocks (``slidemap.evaluation.folds``); each
fold's network trains with its blocks and their buffer blanked out (labels ignored, inputs NaN,
so neither is seen), in every scene whose ground they lie on, and scores those blocks with the
one scorer. Every block is thus scored by
a model that never saw it or the ground around it, once per seed. Decision thresholds are fitted
on out-of-fold predictions only: a fold's blocks are scored at the threshold that maximises the
pooled F1 of all *other* folds' blocks (same recipe, same seed), and the threshold to ship is the
one that maximises the pooled F1 of every out-of-fold prediction.

A candidate is compared with a baseline block by block, on the same blocks, pixels and seeds
(a pixel either recipe has no label for, say where a DEM has no data, counts in neither): the
difference of pooled F1 and its bootstrap interval over blocks, and each block's change against
the spread of its seeds; ``benchmarks/protocol/RULE.md`` says how that decides.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.scene import IGNORE, Scene
from slidemap.data.terrain import radii_px, reach_px
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.folds import (
    LAYOUT_FILE,
    Block,
    Grid,
    held_out,
    held_out_across,
    make_blocks,
    scene_names,
)
from slidemap.evaluation.metrics import AUC_BINS, BinaryConfusion, landslide_scores
from slidemap.evaluation.scorer import score_regions
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, claim_file, make_output_dir
from slidemap.io.modelfile import load_model
from slidemap.schema.config import RunConfig, with_seed
from slidemap.train.checks import check_one_network
from slidemap.train.lineage import learnt_ground, lineage
from slidemap.train.loop import CONTINUES, train

log = logging.getLogger(__name__)

THRESHOLDS = np.round(np.arange(5, 96) / 100, 2)  # the grid thresholds are fitted on
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0  # numpy's default_rng, drawing block indexes in blocks.csv's order
RULE_MINIMUM = {"seeds": 2, "blocks": 8}  # benchmarks/protocol/RULE.md: what may decide
TEMPERATURES = np.round(np.geomspace(0.25, 4.0, 41), 4)  # the grid temperatures are fitted on
BLOCK_COLUMNS = ("recipe", "seed", "block", "fold", "pixels", "landslide", "threshold",
                 "precision", "recall", "f1", "iou")


@dataclass(frozen=True)
class Recipe:
    label: str
    config: RunConfig


def run_crossval(candidate: RunConfig, out_dir: Path, baseline: RunConfig | None = None,
                 seeds: tuple[int, ...] | None = None) -> dict:
    """Train and score every fold × seed of each recipe into ``out_dir`` and write the tables.

    Runs already scored in ``out_dir`` (their ``blocks.json``) are kept, so an interrupted
    protocol continues where it stopped, where they were trained on the same data.
    """
    recipes = [Recipe("candidate", candidate)]
    if baseline is not None:
        _check_pairable(candidate, baseline)
        recipes.append(Recipe("baseline", baseline))
    settings = candidate.crossval
    seeds = settings.seeds if seeds is None else seeds
    if len(seeds) < 1:
        raise SlidemapError("crossval needs at least one seed: pass e.g. --seeds 0,1")
    tile = max(r.config.train.tile for r in recipes)
    buffer = tile if settings.buffer is None else settings.buffer
    if buffer < tile:
        raise SlidemapError(f"crossval.buffer {buffer} px is less than one training window "
                            f"({tile} px): training ground must lie a window away from "
                            "scored ground; raise it or leave it out")
    for recipe in recipes:
        check_one_network(recipe.config, f"the {recipe.label}'s config", "crossval")
        warn_val_unused(recipe)
        check_init_unseen(recipe)
        check_terrain_reach(recipe, buffer)
        for seed in seeds:  # a seed training refuses (-1, say), before anything is written
            with_seed(recipe.config, seed)
    own = {r.label: _scene_arrays(r.config) for r in recipes}
    arrays = common_labels(own)
    rows, cols = settings.blocks
    scenes = arrays["candidate"]
    blocks = make_blocks([s.valid for s in scenes], [s.name for s in scenes], rows, cols,
                         settings.folds)
    grids = scene_grids(candidate, scenes)
    # every recipe and seed holds out the same ground (the recipes share their labels); found,
    # and checked to leave training ground, before anything is written or trained
    hidden = [training_ground(scenes, blocks, fold, buffer, grids)
              for fold in range(settings.folds)]
    # a recipe's folds record the pixels they are trained and scored on where the pairing
    # narrowed its own labels (the scripts copy a recipe's folds into the next comparison), and
    # what its scenes' files hold
    labels = {r.label: narrowed_labels({r.label: own[r.label]}, {r.label: arrays[r.label]})
              for r in recipes}
    data = {r.label: data_digest(arrays[r.label]) for r in recipes}
    records = {(r.label, seed, fold): fold_record(r.config, arrays[r.label], blocks, fold,
                                                  buffer, seed, hidden[fold], labels[r.label],
                                                  data[r.label])
               for r in recipes for seed in seeds for fold in range(settings.folds)}
    check_reused_folds(out_dir, [(out_dir / label / f"s{seed}" / f"fold{fold}", record)
                                 for (label, seed, fold), record in records.items()])
    make_output_dir(out_dir, "crossval folder")
    _claim_layout(blocks, buffer, out_dir, narrowed_labels(own, arrays))
    confusions: dict[str, dict[tuple[int, str], BinaryConfusion]] = {}
    for recipe in recipes:
        confusions[recipe.label] = {}
        for seed in seeds:
            for fold in range(settings.folds):
                run_dir = out_dir / recipe.label / f"s{seed}" / f"fold{fold}"
                log.info(f"{recipe.label} seed {seed} fold {fold}")
                scored = run_fold(recipe.config, arrays[recipe.label], blocks, fold, buffer,
                                  seed, run_dir, hidden[fold],
                                  records[(recipe.label, seed, fold)])
                for name, confusion in scored.items():
                    confusions[recipe.label][(seed, name)] = confusion
    summary = summarise(confusions, blocks, seeds, settings.folds)
    summary["buffer_px"] = buffer
    summary["blocks"] = len(blocks)
    write_tables(summary, out_dir)
    return summary


def _check_pairable(candidate: RunConfig, baseline: RunConfig) -> None:
    """Paired figures need the same scenes on the same working grid."""
    if [(s.image, s.mask, s.aoi) for s in candidate.train_scenes] != \
            [(s.image, s.mask, s.aoi) for s in baseline.train_scenes]:
        raise SlidemapError("the baseline config lists other scenes than the candidate in "
                            "data.train: a paired comparison needs the same scenes")
    if candidate.inputs.resolution_m != baseline.inputs.resolution_m:
        raise SlidemapError(f"the candidate works at resolution_m "
                            f"{candidate.inputs.resolution_m} and the baseline at "
                            f"{baseline.inputs.resolution_m}: blocks are paired on one grid, "
                            "so give both the same resolution_m")


def warn_val_unused(recipe: Recipe) -> None:
    """Say that ``data.val`` is not used: a fold's only held-out ground is its blocks, which
    it scores, so with ``select: best`` it keeps the epoch of lowest training loss."""
    config = recipe.config
    if not (config.val_scenes or config.val_patches):
        return
    kept = ("each fold keeps the epoch of lowest training loss (training.select: best without "
            "validation; set select: last to keep the last)" if config.train.select == "best"
            else "each fold keeps its last epoch")
    warnings.warn(f"crossval does not use the {recipe.label}'s data.val: {kept}",
                  SlidemapWarning, stacklevel=3)


def terrain_reach(config: RunConfig) -> int:
    """How many working pixels around a pixel its terrain descriptors read (relief, roughness,
    slope and curvature stencils), over the config's scenes: 0 without any."""
    spec = config.inputs
    reach = 0
    for source in config.train_scenes:
        if source.dem is None:
            continue
        with Scene(source.image) as scene:  # read whole, as load_scene_arrays does
            whole = Window(0, 0, scene.width, scene.height)
            step = scene.working_step_m(whole, scene.decimation(spec.resolution_m))
        radii, rough = radii_px(spec.relief_m, spec.roughness_m, step)
        reach = max(reach, *reach_px([*radii, rough]), int(spec.slope or spec.curvature))
    return reach


def check_terrain_reach(recipe: Recipe, buffer: int) -> None:
    """Refuse descriptors that reach across the buffer: a scene's descriptors are computed
    before a fold blanks its blocks, so a training pixel's relief would read the DEM of ground
    the fold scores."""
    reach = terrain_reach(recipe.config)
    if reach > buffer:
        raise SlidemapError(f"the {recipe.label}'s terrain descriptors (inputs.relief_m, "
                            f"roughness_m) read {reach} px around a pixel, beyond the crossval "
                            f"buffer of {buffer} px: training pixels would read the DEM of "
                            f"scored blocks; set crossval.buffer to at least {reach}")


def _scene_arrays(config: RunConfig) -> list[SceneArrays]:
    if config.train_patches or not config.train_scenes:
        raise SlidemapError(f"config {config.source}: crossval cuts labelled scenes into "
                            "spatial blocks: list scenes (image, mask, dem) in data.train, "
                            "not patch sets")
    names = scene_names([s.image for s in config.train_scenes])
    return [replace(load_scene_arrays(s.image, s.mask, s.dem, config.inputs, s.aoi), name=name)
            for s, name in zip(config.train_scenes, names, strict=True)]


def scene_grids(config: RunConfig, scenes: list[SceneArrays]) -> list[Grid]:
    """Each scene's working grid on the ground (its image's CRS and transform, scaled to the
    working pixels its arrays were read at), so that folds can hold a block's ground out of
    every scene that shows it."""
    grids = []
    for source, arrays in zip(config.train_scenes, scenes, strict=True):
        with Scene(source.image) as scene:
            profile = scene.profile
        height, width = arrays.target.shape
        scale = Affine.scale(profile["width"] / width, profile["height"] / height)
        grids.append(Grid(profile["crs"], profile["transform"] @ scale))
    return grids


def common_labels(arrays: dict[str, list[SceneArrays]]) -> dict[str, list[SceneArrays]]:
    """Every recipe's scenes with labels ignored wherever any recipe's are: paired figures must
    count the same pixels, yet a recipe without a DEM is labelled where the DEM has no data.
    Blocks are cut from, trained and scored on these common labels."""
    if len(arrays) < 2:
        return arrays
    out: dict[str, list[SceneArrays]] = {label: [] for label in arrays}
    dropped = dict.fromkeys(arrays, 0)
    for versions in zip(*arrays.values(), strict=True):
        if len({v.target.shape for v in versions}) > 1:
            raise SlidemapError(f"scene {versions[0].name} has another working grid in the "
                                "candidate than in the baseline: give both configs the same "
                                "inputs.resolution_m and scenes")
        common = np.logical_and.reduce([v.valid for v in versions])
        if not common.any():
            raise SlidemapError(f"scene {versions[0].name} has no pixel labelled in both "
                                "recipes' inputs: check the nodata of its DEM and image")
        for label, version in zip(arrays, versions, strict=True):
            dropped[label] += int((version.valid & ~common).sum())
            target = np.where(common, version.target, IGNORE).astype(np.uint8)
            out[label].append(replace(version, target=target))
    for label, count in dropped.items():
        if count:
            log.info(f"crossval: {count:,} labelled px of the {label} are left out, where "
                     "another recipe's inputs have no data: both recipes are scored on the "
                     "same pixels")
    return out


def check_init_unseen(recipe: Recipe) -> None:
    """Refuse a starting model (``init``) that trained on a scene crossval scores, or whose
    epoch was selected on one's labels: every block would then be scored by a model that saw
    it. An image on the ground of a scored scene (another file, crop or date of it) counts as
    that scene, where both are local rasters with a CRS. What its files leave unknown is warned
    about."""
    init = recipe.config.init
    if init is None:
        return
    found = lineage(Path(init))
    seen = learnt_ground(found, [s.image for s in recipe.config.train_scenes])
    if seen:
        raise SlidemapError(f"the {recipe.label}'s init model {init} {seen}, which crossval "
                            "scores: its blocks would be scored by a model that saw them; start "
                            "from a model trained on other ground, or drop init")
    for what in found.unknown:
        warnings.warn(f"crossval cannot check that the {recipe.label}'s init model {init} "
                      f"never saw the scored scenes: {what}", SlidemapWarning, stacklevel=2)


def training_ground(scenes: list[SceneArrays], blocks: list[Block], fold: int, buffer: int,
                    grids: list[Grid] | None = None) -> list[np.ndarray]:
    """Per scene, the pixels fold ``fold`` may not train on (its blocks and their buffer, on
    whichever scene their ground lies); refused where no labelled pixel is left to train on."""
    hidden = [held_out(blocks, fold, index, scene.target.shape, buffer)
              for index, scene in enumerate(scenes)]
    if grids is not None:
        valids = [scene.valid for scene in scenes]
        hidden = [mask | held_out_across(blocks, fold, index, valids, grids, buffer)
                  for index, mask in enumerate(hidden)]
    if not any((scene.valid & ~mask).any() for scene, mask in zip(scenes, hidden, strict=True)):
        raise SlidemapError(f"crossval fold {fold} has no training ground left beyond its "
                            f"buffer of {buffer} px: use more blocks, or a smaller buffer "
                            "with a smaller training.tile")
    return hidden


def masked_scenes(scenes: list[SceneArrays], hidden: list[np.ndarray]) -> list[SceneArrays]:
    """``scenes`` with labels ignored and inputs NaN where ``hidden``; scenes left without a
    labelled pixel are dropped."""
    out = []
    for scene, hidden_here in zip(scenes, hidden, strict=True):
        target = np.where(hidden_here, IGNORE, scene.target).astype(np.uint8)
        if not (target != IGNORE).any():
            continue
        x = np.where(hidden_here[None], np.nan, scene.x).astype(np.float32)
        out.append(SceneArrays(scene.name, x, target))
    return out


def shared_ground(scenes: list[SceneArrays], blocks: list[Block], fold: int, buffer: int,
                  hidden: list[np.ndarray]) -> str | None:
    """A digest of what fold ``fold`` holds out of its scenes (``hidden``, from
    :func:`training_ground`) for other scenes' blocks on the same ground, or None where it holds
    out nothing more: a fold trained before scenes were placed on the ground, or with scenes
    placed elsewhere, must not be reused."""
    extra = [mask & ~held_out(blocks, fold, index, scene.target.shape, buffer)
             for index, (scene, mask) in enumerate(zip(scenes, hidden, strict=True))]
    if not any(mask.any() for mask in extra):
        return None
    digest = hashlib.sha256()
    for mask in extra:
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()[:16]


def run_fold(config: RunConfig, scenes: list[SceneArrays], blocks: list[Block], fold: int,
             buffer: int, seed: int, run_dir: Path, hidden: list[np.ndarray] | None = None,
             record: dict | None = None) -> dict[str, BinaryConfusion]:
    """Train fold ``fold`` (or reuse its finished run) and score its blocks; ``hidden`` is
    what it may not train on (:func:`training_ground`: with the scenes placed on the ground, a
    block is held out of every scene that shows it), by default its blocks and buffer alone.
    ``record``: its :func:`fold_record` (with the pairing's labels digest), by default made
    here, so that a fold trained on other pixels or data is never reused."""
    fold_config = with_seed(config, seed).without_data()
    if hidden is None:
        hidden = training_ground(scenes, blocks, fold, buffer)
    if record is None:
        record = fold_record(config, scenes, blocks, fold, buffer, seed, hidden, None,
                             data_digest(scenes))
    check_fold(run_dir, record)
    _claim(run_dir, record)
    result = run_dir / "blocks.json"
    if result.exists():
        return _read_confusions(result)
    if not (run_dir / "summary.json").exists():  # not trained to the end: train or resume
        resume = (run_dir / "checkpoint.safetensors").exists()
        train(fold_config, run_dir, resume=resume, overwrite=not resume,
              extra_train=masked_scenes(scenes, hidden), how_to_go_on=CONTINUES)
    bundle = load_model(run_dir / "model")
    predictor = Predictor([bundle], precision=config.train.precision)
    options = PredictOptions(batch_size=config.predict.batch_size,
                             precision=config.train.precision)
    scored: dict[str, BinaryConfusion] = {}
    for index, scene in enumerate(scenes):
        mine = [b for b in blocks if b.fold == fold and b.scene == index]
        if mine:
            regions = [b.mask(scene.target.shape) for b in mine]
            for block, confusion in zip(mine, score_regions(predictor, scene, regions, options),
                                        strict=True):
                scored[block.name] = confusion
    with atomic_path(result) as tmp:
        tmp.write_text(json.dumps({name: confusion_dict(c) for name, c in scored.items()}))
    return scored


def fold_record(config: RunConfig, scenes: list[SceneArrays], blocks: list[Block], fold: int,
                buffer: int, seed: int, hidden: list[np.ndarray], labels: str | None,
                data: str) -> dict:
    """What a fold's ``fold.json`` records of what it trains and scores (:func:`run_fold`)."""
    shared = shared_ground(scenes, blocks, fold, buffer, hidden)
    recipe = {k: v for k, v in config.to_dict().items() if k != "crossval"}
    return {"config": recipe, "seed": seed, "fold": fold, "buffer": buffer,
            "blocks": [vars(b) for b in blocks],
            **({"shared_ground": shared} if shared else {}),
            **({"common_labels": labels} if labels else {}), "data": data}


def _fold_text(record: dict) -> str:
    return json.dumps(record, indent=2, default=str) + "\n"


def _conflict(run_dir: Path) -> str:
    return (f"{run_dir} holds a fold trained with another config, seed or block layout, or on "
            "other labelled pixels: delete it or choose another --out")


def _claim(run_dir: Path, record: dict) -> None:
    """Write what the fold trains (``fold.json``), or refuse a folder that trained another."""
    claim_file(run_dir / "fold.json", _fold_text(record), _fold_identity, _conflict(run_dir))


def check_fold(run_dir: Path, record: dict) -> bool:
    """Refuse a fold folder that trained another fold (:func:`fold_record`), or trained and
    scored on other data than the scenes hold now (their files' content, which the config does
    not record); False where its data cannot be checked, its ``fold.json`` written before
    crossval recorded it."""
    path = run_dir / "fold.json"
    if not path.exists():
        return True
    text = path.read_text()
    if _fold_identity(text) != _fold_identity(_fold_text(record)):
        raise SlidemapError(_conflict(run_dir))
    recorded = json.loads(text).get("data")
    if recorded is None:
        return False
    if recorded != record["data"]:
        raise SlidemapError(f"{run_dir} holds a fold trained and scored on other data than its "
                            "scenes hold now (an image, DEM or mask was changed or replaced "
                            "under the same name): delete it or choose another --out")
    return True


def check_reused_folds(out_dir: Path, folds: list[tuple[Path, dict]]) -> None:
    """Refuse, before anything is written or trained, any fold folder of the run that holds
    another fold or was trained on other data (``folds``: each folder and its
    :func:`fold_record`); say once that the data of folds written before it was recorded cannot
    be checked (the protocol's scripts reuse such folds, so they are kept)."""
    unchecked = sum(not check_fold(run_dir, record) for run_dir, record in folds)
    if unchecked:
        warnings.warn(f"crossval cannot check the data {unchecked} fold(s) in {out_dir} were "
                      "trained and scored on (written before crossval recorded it) and reuses "
                      "them: if an image, DEM or mask changed since, delete them or choose "
                      "another --out", SlidemapWarning, stacklevel=3)


def _fold_identity(text: str) -> dict:
    """A ``fold.json`` as a rerun compares it: without the config's ``crossval`` section
    (which seeds the protocol runs; its seed, blocks and buffer are recorded apart), which folds
    written before it was left out still hold, so that adding a seed to ``crossval.seeds``
    continues the protocol as ``--seeds`` does; without its ``data``, which
    :func:`check_fold` compares apart, as folds written before it was recorded lack it."""
    record = json.loads(text)
    if isinstance(record.get("config"), dict):
        record["config"].pop("crossval", None)
    record.pop("data", None)
    return record


def data_digest(scenes: list[SceneArrays]) -> str:
    """A digest of what a recipe's folds train and score on: every scene's channels and labels
    as read (after :func:`common_labels`). The config records the files' names only, and a mask
    relabelled, or an image or DEM replaced, under the same name left the stale folds reused."""
    digest = hashlib.blake2b(digest_size=16)
    for scene in scenes:
        for array in (scene.x, scene.target):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def confusion_dict(confusion: BinaryConfusion) -> dict:
    """A confusion matrix with its probability histograms, as JSON keeps it."""
    return {"threshold": confusion.threshold, "counts": confusion.counts.tolist(),
            "pos_hist": confusion.pos_hist.tolist(), "neg_hist": confusion.neg_hist.tolist()}


def confusion_from(data: dict) -> BinaryConfusion:
    """The confusion matrix :func:`confusion_dict` wrote."""
    confusion = BinaryConfusion(data["threshold"])
    confusion.counts[:] = data["counts"]
    confusion.pos_hist[:] = data["pos_hist"]
    confusion.neg_hist[:] = data["neg_hist"]
    return confusion


def _read_confusions(path: Path) -> dict[str, BinaryConfusion]:
    return {name: confusion_from(data) for name, data in json.loads(path.read_text()).items()}


def best_threshold(confusions: list[BinaryConfusion]) -> float:
    """The threshold of the grid with the highest F1 of the pooled histograms."""
    scores = []
    for t in THRESHOLDS:
        pooled = np.sum([c.counts_at(float(t)) for c in confusions], axis=0)
        scores.append(landslide_scores(*pooled[:3])["f1"])
    return float(THRESHOLDS[int(np.argmax(scores))])


def fit_temperature(confusions: list[BinaryConfusion]) -> float:
    """The temperature T of the grid that minimises the log-loss of σ(logit(p) / T) over the
    pooled probability histograms (bin centres): T > 1 softens over-confident probabilities.
    It does not move the F1-best threshold's ranking of pixels, only what the numbers mean."""
    pos = np.sum([c.pos_hist for c in confusions], axis=0).astype(np.float64)
    neg = np.sum([c.neg_hist for c in confusions], axis=0).astype(np.float64)
    centres = (np.arange(AUC_BINS) + 0.5) / AUC_BINS
    logits = np.log(centres / (1 - centres))
    losses = []
    for temperature in TEMPERATURES:
        scaled = logits / temperature
        # -log σ(z) = log(1 + e^-z); -log(1 - σ(z)) = log(1 + e^z)
        losses.append(float((pos * np.logaddexp(0, -scaled)).sum()
                            + (neg * np.logaddexp(0, scaled)).sum()))
    return float(TEMPERATURES[int(np.argmin(losses))])


def summarise(confusions: dict[str, dict[tuple[int, str], BinaryConfusion]],
              blocks: list[Block], seeds: tuple[int, ...], folds: int) -> dict:
    """Per-block rows at out-of-fold thresholds, pooled figures, and the paired comparison."""
    fold_of = {b.name: b.fold for b in blocks}
    names = [b.name for b in blocks]
    summary: dict = {"seeds": list(seeds), "folds": folds, "recipes": {}, "rows": []}
    counts: dict[str, np.ndarray] = {}  # recipe -> (seeds, blocks, 4) at out-of-fold thresholds
    for label, scored in confusions.items():
        table = np.zeros((len(seeds), len(names), 4), dtype=np.int64)
        for si, seed in enumerate(seeds):
            for fold in range(folds):
                others = [scored[(seed, n)] for n in names if fold_of[n] != fold]
                threshold = best_threshold(others)
                for bi, name in enumerate(names):
                    if fold_of[name] != fold:
                        continue
                    table[si, bi] = scored[(seed, name)].counts_at(threshold)
                    summary["rows"].append(_row(label, seed, name, fold, threshold,
                                                table[si, bi]))
        counts[label] = table
        block_f1 = _f1(table).mean(axis=0)  # each block: mean over seeds
        every = list(scored.values())
        shipped = best_threshold(every)
        at_model = _pooled([c.counts for c in every])
        summary["recipes"][label] = {
            "pooled": _pooled(table.reshape(-1, 4)),
            "pooled_per_seed": [_pooled(table[si])["f1"] for si in range(len(seeds))],
            "pooled_at_model_threshold": {**at_model, "threshold": every[0].threshold},
            "mean_block_f1": float(block_f1.mean()),
            "worst_block": {"block": names[int(np.argmin(block_f1))],
                            "f1": float(block_f1.min())},
            "oof_threshold": shipped,
            "oof_temperature": fit_temperature(every),
        }
    if "baseline" in counts:
        summary["comparison"] = compare(counts["candidate"], counts["baseline"], names)
    return summary


def _row(label: str, seed: int, name: str, fold: int, threshold: float,
         counts: np.ndarray) -> dict:
    tp, fp, fn, tn = (int(v) for v in counts)
    pixels = tp + fp + fn + tn
    return {"recipe": label, "seed": seed, "block": name, "fold": fold, "pixels": pixels,
            "landslide": (tp + fn) / pixels if pixels else 0.0, "threshold": threshold,
            **landslide_scores(tp, fp, fn)}


def _f1(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def _pooled(counts: list | np.ndarray) -> dict[str, float]:
    tp, fp, fn, tn = (int(v) for v in np.sum(np.asarray(counts), axis=0))
    return {**landslide_scores(tp, fp, fn), "pixels": tp + fp + fn + tn}


def compare(candidate: np.ndarray, baseline: np.ndarray, names: list[str]) -> dict:
    """Pooled-F1 difference (candidate − baseline, all seeds pooled) with a 95 % percentile
    bootstrap interval over blocks (blocks drawn with replacement, the same draw for both), and
    each block's change against its seed spread."""
    def pooled_f1(table: np.ndarray, picks: np.ndarray) -> float:
        return float(_f1(table[:, picks].sum(axis=(0, 1))))

    everything = np.arange(len(names))
    difference = pooled_f1(candidate, everything) - pooled_f1(baseline, everything)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = [pooled_f1(candidate, picks) - pooled_f1(baseline, picks)
             for picks in rng.integers(0, len(names), size=(BOOTSTRAP, len(names)))]
    low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    cand_f1, base_f1 = _f1(candidate), _f1(baseline)  # (seeds, blocks)
    spread = np.maximum(np.ptp(cand_f1, axis=0), np.ptp(base_f1, axis=0))
    change = cand_f1.mean(axis=0) - base_f1.mean(axis=0)
    blocks = [{"block": n, "change": float(c), "seed_spread": float(s),
               "loses_beyond_spread": loses_beyond_spread(candidate[:, b], baseline[:, b])}
              for b, (n, c, s) in enumerate(zip(names, change, spread, strict=True))]
    passes = low > 0 and not any(b["loses_beyond_spread"] for b in blocks)
    has = {"seeds": candidate.shape[0], "blocks": len(names)}
    short = [f"{has[k]} {k if has[k] != 1 else k[:-1]}" for k, least in RULE_MINIMUM.items()
             if has[k] < least]
    # a run of fewer seeds or blocks than the rule asks for decides nothing: with one seed no
    # block has a spread to lose within, and a few blocks give the bootstrap little to draw
    decision = ("adopt" if passes else "keep the baseline") if not short else (
        f"none: RULE.md asks for at least {RULE_MINIMUM['seeds']} seeds and "
        f"{RULE_MINIMUM['blocks']} blocks, this run has {' and '.join(short)} (its tests "
        f"alone would {'adopt' if passes else 'keep the baseline'})")
    return {"pooled_f1_difference": difference, "interval_95": [low, high],
            "bootstrap": BOOTSTRAP, "bootstrap_seed": BOOTSTRAP_SEED, "blocks": blocks,
            "adopt": passes and not short, "decision": decision}


def loses_beyond_spread(candidate: np.ndarray, baseline: np.ndarray) -> bool:
    """RULE.md's second test for one block (its counts per seed, each recipe): whether the
    baseline's mean F1 exceeds the candidate's by more than the block's seed spread. In exact
    fractions: F1s of counts are ratios of integers, and a loss of exactly the spread, which
    the rule allows, came out a rounding error above it in floats (2/3 and 1/2 against 3/4)."""
    cand, base = _exact_f1(candidate), _exact_f1(baseline)
    spread = max(max(cand) - min(cand), max(base) - min(base))
    return sum(base) / len(base) - sum(cand) / len(cand) > spread


def _exact_f1(counts: np.ndarray) -> list[Fraction]:
    """Each row's F1 (tp, fp, fn, tn) as a fraction; 0 where it has no landslide either way,
    as :func:`_f1` gives it."""
    out = []
    for tp, fp, fn, _ in counts.tolist():
        den = 2 * tp + fp + fn
        out.append(Fraction(2 * tp, den) if den else Fraction(0))
    return out


def narrowed_labels(own: dict[str, list[SceneArrays]],
                    common: dict[str, list[SceneArrays]]) -> str | None:
    """A digest of the common labelled pixels where they are fewer than a recipe's own, else
    None: folds trained and scored on one set of pixels must not be reused for another (a
    candidate run alone, then continued with a baseline that has no DEM)."""
    pairs = [(o, c) for label in own for o, c in zip(own[label], common[label], strict=True)]
    if all(np.array_equal(o.valid, c.valid) for o, c in pairs):
        return None
    digest = hashlib.sha256()
    for scene in next(iter(common.values())):
        digest.update(np.packbits(scene.valid).tobytes())
    return digest.hexdigest()[:16]


def _claim_layout(blocks: list[Block], buffer: int, out_dir: Path,
                  labels: str | None = None) -> None:
    """Write the block layout the first time, or refuse a folder that holds another before
    anything is written: its folds, tables and ``crossval --adapt`` go by the layout it has.
    ``labels``: the :func:`narrowed_labels` digest, recorded only when there is one, so the
    folders of earlier runs keep their layout."""
    record = {"buffer_px": buffer, "blocks": [vars(b) for b in blocks],
              **({"common_labels": labels} if labels else {})}
    claim_file(out_dir / LAYOUT_FILE, json.dumps(record, indent=2) + "\n",
               json.loads, f"{out_dir} holds a crossval run with another block layout "
               "(crossval.blocks, folds or buffer, or other labelled pixels): delete it or "
               "choose another --out")


def write_tables(summary: dict, out_dir: Path) -> None:
    """blocks.csv and blocks.md (one row per recipe, seed and block), summary.json and .md."""
    rows = summary["rows"]
    with atomic_path(out_dir / "blocks.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(BLOCK_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    table = _md_table(list(BLOCK_COLUMNS), [[_cell(r[c]) for c in BLOCK_COLUMNS] for r in rows])
    with atomic_path(out_dir / "blocks.md") as tmp:
        tmp.write_text("# Cross-validation: every block scored by a model that never saw it\n\n"
                       "Each block at the threshold fitted on the other folds' blocks.\n\n"
                       + "\n".join(table) + "\n")
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(jsontext.dumps({k: v for k, v in summary.items() if k != "rows"},
                                      indent=2) + "\n")
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))


def summary_markdown(summary: dict) -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = ["# Cross-validation summary", "",
             f"{summary['blocks']} blocks in {summary['folds']} folds, buffer "
             f"{summary['buffer_px']} working px, seeds {seeds}. Pooled: one confusion matrix "
             "over every block and seed, each block at the threshold fitted on the other folds "
             "(out of fold). At model threshold: the same pooled at the config's threshold. "
             "OOF threshold: the one fitted on all out-of-fold predictions (to ship); OOF "
             "temperature: the temperature scaling σ(logit(p) / T) of least log-loss on them.",
             ""]
    headings = ["recipe", "pooled F1", "pooled IoU", "precision", "recall",
                "pooled F1 per seed", "mean block F1", "worst block", "F1 at model threshold",
                "OOF threshold", "OOF temperature"]
    body = []
    for label, r in summary["recipes"].items():
        pooled = r["pooled"]
        body.append([label, _cell(pooled["f1"]), _cell(pooled["iou"]),
                     _cell(pooled["precision"]), _cell(pooled["recall"]),
                     " / ".join(_cell(v) for v in r["pooled_per_seed"]),
                     _cell(r["mean_block_f1"]),
                     f"{r['worst_block']['block']} {_cell(r['worst_block']['f1'])}",
                     _cell(r["pooled_at_model_threshold"]["f1"]), _cell(r["oof_threshold"]),
                     _cell(r["oof_temperature"])])
    lines += _md_table(headings, body)
    comparison = summary.get("comparison")
    if comparison:
        low, high = comparison["interval_95"]
        lines += ["", "## Candidate against baseline", "",
                  f"Pooled F1 difference {comparison['pooled_f1_difference']:+.4f}, 95 % "
                  f"bootstrap interval over blocks [{low:+.4f}, {high:+.4f}] "
                  f"({comparison['bootstrap']} draws, numpy default_rng seed "
                  f"{comparison['bootstrap_seed']}, block indexes in this table's order: an "
                  "interval whose end lies within a few thousandths of 0 can fall on either "
                  "side of it with another seed).", "",
                  *_md_table(["block", "F1 change (mean over seeds)", "seed spread",
                              "loses beyond spread"],
                             [[b["block"], f"{b['change']:+.4f}", _cell(b["seed_spread"]),
                               "yes" if b["loses_beyond_spread"] else "no"]
                              for b in comparison["blocks"]]),
                  "", f"Decision by benchmarks/protocol/RULE.md: **{comparison['decision']}**."]
    return "\n".join(lines) + "\n"


def _md_table(headings: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings),
            *["| " + " | ".join(cells) + " |" for cells in body]]


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
