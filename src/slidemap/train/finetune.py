"""Fine-tuning: training that starts from a model file's weights, optionally with a frozen encoder.

A model trained on one site adapts to another from a handful of labelled tiles. Freezing the
encoder keeps its general features and fits only the decoder and head, which is all that a few
tiles can support. :func:`finetune` scores the starting model and the result on the config's
validation data, so the gain (or loss) is on record in ``finetune.json``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from slidemap.data.patches import open_patch_dataset
from slidemap.data.sources import load_arrays, select
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.scorer import score_bundle
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path
from slidemap.io.modelfile import ModelBundle, load_model, model_source
from slidemap.schema.config import RunConfig
from slidemap.train.lineage import Lineage, learnt_ground, learnt_patches, lineage
from slidemap.train.loop import train
from slidemap.train.runfolder import FINETUNE_RECORD, check_run_inputs, run_lock
from slidemap.train.warmstart import check_compatible

FIGURES = ("f1", "iou", "precision", "recall", "auc", "pixels")


def score_on_val(bundle: ModelBundle, config: RunConfig) -> dict[str, float]:
    """Figures of ``bundle`` by the one scorer on the config's validation scenes and patches,
    read with the config's inputs (so a model and its fine-tuned version are read alike)."""
    arrays = load_arrays(config.val_scenes, config.val_patches, config.inputs)
    return score_bundle(replace(bundle, inputs=config.inputs), arrays, config.train.precision,
                        config.predict.batch_size).metrics()


def finetune(config: RunConfig, out_dir: Path, resume: bool = False,
             overwrite: bool = False) -> dict:
    """Train from ``config.init`` and write ``finetune.json`` with before/after figures."""
    if config.init is None:
        raise SlidemapError("fine-tuning needs a model to start from: pass MODEL or set init:")
    if not (config.val_scenes or config.val_patches):
        raise SlidemapError(f"config {config.source}: fine-tuning scores before and after on "
                            "data.val: add the held-out scenes or patches there")
    check_run_inputs(out_dir, config)  # before the starting model is scored
    before = load_model(config.init)
    check_compatible(before, config)
    _warn_if_read_otherwise(before, config)
    _warn_if_validation_was_seen(config)
    report: dict = {"init": str(model_source(config.init)),  # a shipped name as its file
                    "freeze_encoder": config.train.freeze_encoder,
                    "frozen_epochs": config.train.frozen_epochs,
                    "before": _figures(score_on_val(before, config))}
    with run_lock(out_dir):
        model_path = train(config, out_dir, resume=resume, overwrite=overwrite)
        report["after"] = _figures(score_on_val(load_model(model_path), config))
        report["model"] = str(model_path)
        with atomic_path(out_dir / FINETUNE_RECORD) as tmp:
            tmp.write_text(jsontext.dumps(report, indent=2) + "\n")
    return report


def _warn_if_read_otherwise(bundle: ModelBundle, config: RunConfig) -> None:
    """The same channels read at another scale, resolution or optical mode change what the
    model sees: say so, since the fine-tuned file keeps the config's reading. A key that this
    config's data do not use (``resolution_m`` without scenes, ``scale`` without patches) leaves
    'before' as predict makes it, and changes only how the fine-tuned file reads the other kind
    of data: say that instead, not that 'before' differs."""
    changed = {key: f"{key} {getattr(bundle.inputs, key)} → {getattr(config.inputs, key)}"
               for key in ("scale", "resolution_m", "optical")
               if getattr(bundle.inputs, key) != getattr(config.inputs, key)}
    if not changed:
        return
    said = ", ".join(changed.values())
    if changed.keys() & _keys_read(config):
        warnings.warn(f"config {config.source} reads the inputs otherwise than {config.init} was "
                      f"trained ({said}): fine-tuning trains and scores both models that way, "
                      "and 'before' is not the map predict makes with the starting model; set "
                      "those inputs as the model has them to keep its reading",
                      SlidemapWarning, stacklevel=2)
        return
    unread = "scenes" if "resolution_m" in changed else "patches"
    warnings.warn(f"config {config.source} sets other inputs than {config.init} was trained "
                  f"with ({said}): its data are read alike, but the fine-tuned file keeps the "
                  f"config's inputs and will read {unread} otherwise than the starting model; "
                  "set those inputs as the model has them to keep its reading",
                  SlidemapWarning, stacklevel=2)


def _keys_read(config: RunConfig) -> set[str]:
    """The reading keys that the config's own data use: scenes are read at ``resolution_m``,
    patches at ``scale``, both in the ``optical`` mode."""
    keys = {"optical"}
    if config.train_scenes or config.val_scenes:
        keys.add("resolution_m")
    if config.train_patches or config.val_patches:
        keys.add("scale")
    return keys


def _warn_if_validation_was_seen(config: RunConfig) -> None:
    """A starting model that trained on a validation scene's ground (the file, a crop of it,
    the scene in another CRS) or on patches of a validation patch set, or kept the epoch its
    own validation chose there, scores 'before' on what it learnt, and gives 'after' a head
    start there. Where its files leave that unknown (an image or patch set it learnt from not
    found from here: the shipped models' data, or a name recorded relative to another folder),
    say so: silence read as held out."""
    assert config.init is not None
    found = lineage(Path(config.init))
    seen = (learnt_ground(found, [s.image for s in config.val_scenes], "validation scene")
            or learnt_ground(found, _validation_patches(config), "validation patch")
            or learnt_patches(found, config.val_patches, config.inputs, "validation patch set"))
    unchecked, why = _unchecked(config, found)
    if seen:
        warnings.warn(f"{config.init} {seen}: finetune.json's figures are not held out; "
                      "validate on other ground", SlidemapWarning, stacklevel=2)
    elif unchecked:
        warnings.warn(f"finetune cannot check that {config.init} never learnt "
                      f"{' or '.join(unchecked)} ({'; '.join(dict.fromkeys(why))}): "
                      "finetune.json's figures may not be held out", SlidemapWarning,
                      stacklevel=2)


def _validation_patches(config: RunConfig) -> list[Path]:
    """The images of the validation patch folders' chosen patches, compared as scenes are (a
    GeoTIFF patch has ground); a Landslide4Sense split has none and is not listed."""
    images = []
    for source in config.val_patches:
        if source.kind == "patches":
            dataset = open_patch_dataset(source.root)
            images += [dataset.files[i].image for i in select(dataset.names, source)]
    return images


def _unchecked(config: RunConfig, found: Lineage) -> tuple[list[str], list[str]]:
    """What of the config's validation data the lineage ``found`` leaves unchecked, and why:
    only the kinds of data the config validates on."""
    unchecked: list[str] = []
    why: list[str] = []
    if config.val_scenes and found.unknown:
        unchecked.append("the ground of a validation scene")
        why += found.unknown
    if config.val_patches and found.patches_unknown:
        unchecked.append("the patches of a validation patch set")
        why += found.patches_unknown
    return unchecked, why


def _figures(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in FIGURES}
