"""``slidemap crossval --adapt``: scene adaptation measured in the protocol.

Each fold model of the candidate recipe (``OUT/candidate/sSEED/foldF``) adapts to each of its
held-out blocks as ``slidemap predict --adapt`` adapts to a scene. The block is the unlabelled
target: its channels come from the scene loaded *without* its labels (a margin of context
around the block is read, never labelled), so no label of scored ground can reach the training.
The block is then scored by the one scorer with the model as trained and with the adapted copy,
each predicting the whole scene, and the two are compared as ``crossval`` compares two recipes:
thresholds fitted out of fold, pooled F1 and IoU, the paired bootstrap interval over blocks and
``benchmarks/protocol/RULE.md``'s decision, "candidate" being the adapted model and "baseline"
the model as trained. Tables go to ``OUT/adapt/``; each block's result is kept there, so an
interrupted measurement continues where it stopped, while the fold model's weights and the
scene's data are the ones it was measured with (a fold retrained, after crossval refused it on
changed data, keeps its path, not its weights).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path

from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.folds import LAYOUT_FILE, Block
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.evaluation.scorer import score_regions
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.runtime import torch_threads
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, make_output_dir
from slidemap.io.modelfile import load_model, model_paths
from slidemap.io.provenance import sha256_file
from slidemap.schema.config import RunConfig
from slidemap.train.adapt import AdaptOptions, adapt_model, block_chunk
from slidemap.train.crossval import (
    confusion_dict,
    confusion_from,
    data_digest,
    summarise,
    summary_markdown,
    write_tables,
)

log = logging.getLogger(__name__)


def measure_adaptation(config: RunConfig, out_dir: Path, options: AdaptOptions,
                       seeds: tuple[int, ...] | None = None) -> dict:
    """Adapt every fold model of ``out_dir`` (a crossval run of ``config``) to each of its
    held-out blocks, score both, and write ``OUT/adapt/`` (summary, blocks, cost)."""
    with torch_threads(config.train.threads):
        return _measure_adaptation(config, out_dir, options, seeds)


def _measure_adaptation(config: RunConfig, out_dir: Path, options: AdaptOptions,
                        seeds: tuple[int, ...] | None) -> dict:
    layout = out_dir / LAYOUT_FILE
    if not layout.exists():
        raise SlidemapError(f"{out_dir} holds no crossval run (no {LAYOUT_FILE}): run "
                            f"slidemap crossval CONFIG --out {out_dir} first")
    recorded = json.loads(layout.read_text())
    blocks = [Block(**b) for b in recorded["blocks"]]
    settings = config.crossval
    seeds = settings.seeds if seeds is None else seeds
    scenes = config.train_scenes
    labelled = [load_scene_arrays(s.image, s.mask, s.dem, config.inputs, s.aoi) for s in scenes]
    unlabelled = [load_scene_arrays(s.image, None, s.dem, config.inputs) for s in scenes]
    predict = PredictOptions(batch_size=config.predict.batch_size,
                             precision=config.train.precision)
    adapt_dir = out_dir / "adapt"
    make_output_dir(adapt_dir, "adaptation folder")
    confusions: dict[str, dict[tuple[int, str], BinaryConfusion]] = {"candidate": {},
                                                                     "baseline": {}}
    data = [data_digest([scene]) for scene in labelled]
    costs, unchecked = [], 0
    for seed in seeds:
        for block in sorted(blocks, key=lambda b: (b.fold, b.name)):
            model = out_dir / "candidate" / f"s{seed}" / f"fold{block.fold}" / "model"
            log.info(f"adapt seed {seed} fold {block.fold} block {block.name}")
            done = adapt_block(model, block, labelled[block.scene], unlabelled[block.scene],
                               replace(options, seed=seed), predict,
                               adapt_dir / f"s{seed}" / f"{block.name}.json",
                               data[block.scene])
            unchecked += "model_sha256" not in done
            confusions["candidate"][(seed, block.name)] = confusion_from(done["adapted"])
            confusions["baseline"][(seed, block.name)] = confusion_from(done["as_trained"])
            costs.append({"seed": seed, "block": block.name, **done["cost"]})
    if unchecked:
        warnings.warn(f"crossval --adapt cannot check the fold model and data {unchecked} "
                      f"adaptation(s) in {adapt_dir} were measured with (written before it "
                      "recorded them) and reuses them: if a fold was retrained or a scene "
                      f"changed since, delete {adapt_dir}", SlidemapWarning, stacklevel=3)
    summary = summarise(confusions, blocks, seeds, settings.folds)
    summary |= {"buffer_px": recorded["buffer_px"], "blocks": len(blocks),
                "adapt": options.settings(), "cost": costs}
    write_tables(summary, adapt_dir)
    with atomic_path(adapt_dir / "summary.md") as tmp:
        tmp.write_text(adapt_markdown(summary))
    return summary


def adapt_block(model: Path, block: Block, labelled: SceneArrays, unlabelled: SceneArrays,
                options: AdaptOptions, predict: PredictOptions, result: Path,
                data: str) -> dict:
    """One fold model adapted to one held-out block (or the result kept from an earlier run
    with the same settings, model weights and ``data``, the :func:`data_digest` of the block's
    scene): the block's confusion as trained and adapted, and the cost."""
    identity = {"settings": options.settings(), "model": str(model),
                "model_sha256": sha256_file(model_paths(model)[0]), "data": data}
    if result.exists():
        done = json.loads(result.read_text())
        if _measured_with(done, identity, result):
            return done
        log.info(f"{result.name}: the fold model or its scene changed since: adapting again")
    if unlabelled.target.shape != labelled.target.shape or (unlabelled.target == 1).any():
        raise SlidemapError(f"the unlabelled arrays of {labelled.name} do not match its grid")
    bundle = load_model(model)
    chunk = block_chunk(unlabelled, block.top, block.bottom, block.left, block.right,
                        bundle.predict.overlap)
    region = [block.mask(labelled.target.shape)]
    as_trained = score_regions(Predictor([bundle], precision=predict.precision), labelled,
                               region, predict)[0]
    adapted = adapt_model(bundle, [chunk], options, predict)
    after = score_regions(Predictor([adapted.bundle], precision=predict.precision), labelled,
                          region, predict)[0]
    record = adapted.record
    done = {**identity, "block": block.name,
            "as_trained": confusion_dict(as_trained), "adapted": confusion_dict(after),
            "cost": {"seconds": record["seconds"], "windows": record["windows"],
                     "stopped_by": record["stopped_by"],
                     "block_pixels": record["chunk_pixels"]},
            "adaptation": record}
    result.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(result) as tmp:
        tmp.write_text(jsontext.dumps(done, indent=2) + "\n")
    return done


def _measured_with(done: dict, identity: dict, result: Path) -> bool:
    """Whether the kept adaptation ``done`` measured the fold model and data of ``identity``
    (:func:`adapt_block`); one measured with other settings, or the model of another folder, is
    refused. Results written before the weights and data were recorded count as the same."""
    if done["settings"] != identity["settings"] or done["model"] != identity["model"]:
        raise SlidemapError(f"{result} holds an adaptation with other settings or another "
                            f"model: delete {result.parent.parent} or choose another --out")
    return all(done.get(key, identity[key]) == identity[key] for key in ("model_sha256", "data"))


def adapt_markdown(summary: dict) -> str:
    """crossval's summary with the adapted model as "candidate", and what adapting cost."""
    settings = summary["adapt"]
    costs = summary["cost"]
    seconds = [c["seconds"] for c in costs]
    pixels = [c["block_pixels"] for c in costs]
    lines = ["# Scene adaptation in the protocol", "",
             "candidate = each fold model adapted to its held-out block (no labels), "
             "baseline = the same fold model as trained.", "",
             f"Adaptation: at most {settings['minutes']:g} min and {settings['windows']} "
             f"windows per block, {settings['rounds']} rounds keeping "
             f"{settings['keep'][0]:g} → {settings['keep'][1]:g} of each predicted class, lr "
             f"{settings['lr']:g}, batch {settings['batch_size']}.", "",
             f"Cost: {sum(seconds) / len(seconds):.0f} s per block on average (max "
             f"{max(seconds):.0f} s; wall time, on a shared CPU) for blocks of {min(pixels):,}–"
             f"{max(pixels):,} working px; stopped by "
             + ", ".join(f"{k} {sum(c['stopped_by'] == k for c in costs)}×"
                         for k in sorted({c["stopped_by"] for c in costs})) + ".", "",
             summary_markdown(summary).removeprefix("# Cross-validation summary\n\n")]
    return "\n".join(lines)
