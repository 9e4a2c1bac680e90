"""Self-training on an unlabelled target: pseudo-label rounds across a domain shift.

Round 0 trains on the labelled source as the run config says. Every round's model then predicts
the target; pixels it is confident about (p ≥ t → landslide, p ≤ 1 − t → background) become
pseudo-labels and the rest is ignored (255). The next round starts from that model and trains on
source + pseudo-labelled target with the ``selftrain.loss`` (soft cross-entropy by default).
Target labels, where they exist, are only used to report each round's figures.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.scene import IGNORE
from slidemap.data.sources import PatchArrays, load_patch_arrays
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.patches import predict_arrays, to_native
from slidemap.io.atomic import atomic_path, check_outputs, resolved
from slidemap.io.modelfile import load_model, save_model, source_paths
from slidemap.schema.config import RunConfig
from slidemap.train.checks import check_buildable
from slidemap.train.loop import RESTART, train

OUTPUTS = ("model.safetensors", "model.json", "rounds.csv", "rounds.md")  # beside the rounds
COLUMNS = ("round", "kept_fraction", "pseudo_landslide_fraction", "target_f1", "target_iou",
           "target_precision", "target_recall", "train_seconds")


@dataclass
class Target:
    """One target scene or patch: arrays at the model's grid (target = validity only) and the
    labels on its own grid when it has any, for reporting."""

    arrays: SceneArrays
    labels: np.ndarray | None


def pseudo_labels(prob: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """1 where p ≥ t, 0 where p ≤ 1 − t, 255 elsewhere and where not ``valid`` (or p is NaN).

    The comparisons run in the probabilities' own precision, so p = 0.3 is background for t = 0.7
    in float32 as it is on paper.
    """
    t = prob.dtype.type(threshold)
    labels = np.full(prob.shape, IGNORE, dtype=np.uint8)
    labels[valid & (prob <= 1 - t)] = 0
    labels[valid & (prob >= t)] = 1
    return labels


def load_targets(config: RunConfig) -> list[Target]:
    """The selftrain targets; their labels, if any, are kept apart from the training arrays."""
    assert config.selftrain is not None
    spec = config.inputs
    targets = []
    for scene in config.selftrain.target_scenes:
        arrays = load_scene_arrays(scene.image, None, scene.dem, spec)
        labels = None
        if scene.mask is not None:
            labels = load_scene_arrays(scene.image, scene.mask, scene.dem, spec,
                                       scene.aoi).target
        targets.append(Target(arrays, labels))
    for source in config.selftrain.target_patches:
        for patch in load_patch_arrays(source, spec, labelled=False):
            unlabelled = PatchArrays(patch.name, patch.x,
                                     np.where(np.isfinite(patch.x).all(axis=0), 0, IGNORE)
                                     .astype(np.uint8), patch.native_valid, source=patch.source)
            targets.append(Target(unlabelled, patch.labels))
    return targets


def selftrain(config: RunConfig, out_dir: Path, overwrite: bool = False) -> list[dict]:
    """Round 0 on the source, then ``rounds`` pseudo-label rounds; writes ``rounds.csv``,
    ``rounds.md`` and the last round's model as ``OUT/model.safetensors``."""
    settings = config.selftrain
    if settings is None:
        raise SlidemapError(f"config {config.source} has no selftrain: section: add "
                            "selftrain: {target: [...], rounds: 3, threshold: 0.7}")
    earlier = [p for p in (out_dir / "rounds.csv", out_dir / "round0") if p.exists()]
    if earlier and not overwrite:
        raise SlidemapError(f"{out_dir} already holds a self-training run ({earlier[0].name}): "
                            "pass --overwrite or choose another --out")
    # the result's model replaced any OUT/model.safetensors: a user's, or the init it starts from
    inputs = [*config.input_files(), *(source_paths(config.init) if config.init else [])]
    check_outputs([out_dir / name for name in OUTPUTS], inputs, overwrite)
    # only an earlier self-training run's rounds are removed (a folder round3 of the user's
    # in --out was deleted with the imagery in it), and never one holding what this run reads
    stale = stale_rounds(out_dir, settings.rounds) if earlier else []
    patch_sets = (*config.train_patches, *config.val_patches, *settings.target_patches)
    check_rounds_hold_no_input(stale, [*inputs, *(source.root for source in patch_sets)])
    round_config = config.changed(
        loss=settings.loss, selftrain=None,
        train=config.train.changed(epochs=settings.epochs or config.train.epochs))
    check_buildable(round_config, f"config {config.source}, selftrain")  # before round 0
    targets = load_targets(config)
    options = PredictOptions(config.predict.tile, config.predict.overlap,
                             config.predict.batch_size, config.train.precision)
    rows: list[dict] = []
    # the rounds' configs have no selftrain section: their model files name the targets whose
    # imagery they learnt from (slidemap.train.lineage reads it)
    seen = {"selftrain_targets": settings.to_dict()["target"]}
    model_path = train(config.changed(selftrain=None), out_dir / "round0", overwrite=overwrite,
                       how_to_go_on=RESTART)
    for number in range(settings.rounds + 1):
        predictor = Predictor([load_model(model_path)], precision=options.precision)
        pseudo, row = pseudo_round(predictor, targets, confident(settings.threshold),
                                   options)
        summary = json.loads((model_path.parent / "summary.json").read_text())
        rows.append({"round": number, **row, "train_seconds": summary["train_seconds"]})
        _write_rounds(rows, out_dir)
        if number == settings.rounds:
            break
        if not row["kept_fraction"]:
            warnings.warn(f"selftrain round {number}'s model is sure of no target pixel (p ≥ "
                          f"{settings.threshold:g} or ≤ {1 - settings.threshold:g}): round "
                          f"{number + 1} trains on the source alone; lower selftrain.threshold",
                          SlidemapWarning, stacklevel=2)
        model_path = train(round_config.changed(init=model_path),
                           out_dir / f"round{number + 1}", overwrite=overwrite,
                           extra_train=pseudo, record=seen, how_to_go_on=RESTART)
    bundle = load_model(model_path)
    bundle.provenance = {**bundle.provenance, **seen, "selftrain": rows}
    save_model(bundle, out_dir / "model", overwrite)
    for folder in stale:  # the earlier run's extra rounds, now overwritten
        shutil.rmtree(folder)
    return rows


def stale_rounds(out_dir: Path, rounds: int) -> list[Path]:
    """The round folders in ``out_dir`` past the last of a run of ``rounds`` rounds (a link
    named like one is no folder a run made)."""
    return sorted(folder for folder in out_dir.glob("round*")
                  if folder.is_dir() and not folder.is_symlink()
                  and folder.name[5:].isdigit() and int(folder.name[5:]) > rounds)


def check_rounds_hold_no_input(stale: list[Path], inputs: list[Path]) -> None:
    """Refuse, before round 0, to remove an earlier run's round folder that holds a file or
    folder this run reads (its init, a scene, a patch set), with or without ``--overwrite``."""
    for folder in stale:
        inside = resolved(folder)
        for path in inputs:
            if inside == resolved(path) or inside in resolved(path).parents:
                raise SlidemapError(
                    f"{folder} (a round of the earlier self-training run, which --overwrite "
                    f"removes) holds {path}, which this run reads: move it or choose another "
                    "--out")


Labeller = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]
"""Pseudo-labels (0, 1, 255) of every target from their probabilities and valid masks."""


def confident(threshold: float) -> Labeller:
    """Labels where p ≥ t or p ≤ 1 − t (:func:`pseudo_labels`), target by target."""
    return lambda probs, valids: [pseudo_labels(p, v, threshold)
                                  for p, v in zip(probs, valids, strict=True)]


def pseudo_round(predictor: Predictor, targets: list[Target], label: Labeller,
                 options: PredictOptions) -> tuple[list[SceneArrays], dict]:
    """The targets with the pixels ``label`` picks from ``predictor``'s probabilities as
    labels, and the round's figures.

    Labels are drawn only where a target is valid; the channels stay readable wherever they
    were (uncertain ground is left unlabelled, not blanked: it is context for its neighbours).
    """
    probs = [predict_arrays(predictor, t.arrays.x, t.arrays.readable, options, t.arrays.flips)
             for t in targets]
    confusion = BinaryConfusion(predictor.threshold)
    pseudo = []
    valid_pixels = kept = landslide = 0
    for target, prob, labels in zip(targets, probs,
                                    label(probs, [t.arrays.valid for t in targets]),
                                    strict=True):
        arrays = target.arrays
        # the target's source too: with training.domain_batches a target patch set is one
        # domain, not one per patch
        pseudo.append(SceneArrays(arrays.name, arrays.x, labels, inputs_valid=arrays.readable,
                                  source=arrays.source))
        valid_pixels += int(arrays.valid.sum())
        kept += int((labels != IGNORE).sum())
        landslide += int((labels == 1).sum())
        if target.labels is not None:
            confusion.update(to_native(prob, arrays)[0], target.labels)
    row: dict = {"kept_fraction": kept / max(valid_pixels, 1),
                 "pseudo_landslide_fraction": landslide / max(kept, 1)}
    if kept and landslide == kept:
        # no figures in the message: the rounds' warnings are one, shown once
        warnings.warn("every pseudo-label is landslide, none background: the model sees "
                      "landslide on all the target ground it is sure of, and training on these "
                      "labels teaches that class alone; check its map of the target",
                      SlidemapWarning, stacklevel=2)
    if confusion.counts.sum():
        metrics = confusion.metrics()
        row |= {f"target_{k}": metrics[k] for k in ("f1", "iou", "precision", "recall")}
    return pseudo, row


def _write_rounds(rows: list[dict], out_dir: Path) -> None:
    with atomic_path(out_dir / "rounds.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), restval="")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out_dir / "rounds.md") as tmp:
        tmp.write_text(rounds_markdown(rows))


def rounds_markdown(rows: list[dict]) -> str:
    """The per-round table; target figures appear only when the target has labels."""
    headings = ["round", "kept", "pseudo landslide", "target F1", "target IoU",
                "target precision", "target recall", "train s (wall)"]
    lines = ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
    for row in rows:
        cells = [str(row["round"]), f"{100 * row['kept_fraction']:.1f} %",
                 f"{100 * row['pseudo_landslide_fraction']:.2f} %"]
        cells += [f"{row[k]:.4f}" if k in row else "–" for k in COLUMNS[3:7]]
        cells.append(f"{row['train_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
