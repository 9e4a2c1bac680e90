"""The training loop: random windows, AdamW + cosine schedule, validation every epoch.

The epoch that ``training.select`` keeps (the best by validation F1 of the landslide class, or
the last) is written as a model file, or with ``training.average_from`` the average of the weights
of every step from that epoch on (``slidemap.train.averaging``). Every epoch also writes a
resumable checkpoint and a line of history (the averaged weights a line of their own).

While training, the kept epoch is ``best.safetensors`` (part of the run's state, like the
checkpoint); ``model.safetensors``, ``model.json`` and ``summary.json`` are published together
when the run ends, so a run that fails (even one replacing an earlier run with ``--overwrite``)
never leaves one run's weights beside another's sidecar or summary.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from slidemap.data.dataset import (
    RandomWindows,
    SceneArrays,
    scene_stats,
)
from slidemap.data.normalization import BandStats
from slidemap.data.sources import load_arrays, shared_with_training
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.scorer import bundle_of, score_bundle
from slidemap.infer.runtime import autocast, torch_threads
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, make_output_dir, staged
from slidemap.io.modelfile import (
    ModelBundle,
    PredictDefaults,
    as_stored,
    model_paths,
    model_source,
    save_model,
)
from slidemap.models import count_members, count_parameters
from slidemap.report.plots import plot_training_curves
from slidemap.schema.config import RunConfig
from slidemap.train import ddp
from slidemap.train.averaging import PREFIX, WeightAverage
from slidemap.train.checkpoint import load_checkpoint, load_extra, save_checkpoint, saved_state
from slidemap.train.checks import check_buildable, check_channels_vary
from slidemap.train.losses import build_loss
from slidemap.train.recipes import build_recipes
from slidemap.train.runfolder import (
    RUN_OUTPUTS,
    check_run_inputs,
    check_same_run,
    drop_finetune_record,
    run_identity,
)
from slidemap.train.warmstart import initial_model, parameter_groups, set_encoder_for_epoch

console = Console(stderr=True)
log = logging.getLogger(__name__)
WARM_UP = 0.1  # share of the steps that warm the learning rate up to its peak


RESUME = "rerun the same command with --resume to continue from there"
CONTINUES = "rerun the same command to continue from there"  # study, crossval: they resume
# selftrain and newsite, which take no --resume
RESTART = "this command does not resume: rerun it with --overwrite to start again"


def train(config: RunConfig, out_dir: Path, resume: bool = False,
          overwrite: bool = False, extra_train: Sequence[SceneArrays] = (),
          record: dict | None = None, how_to_go_on: str = RESUME) -> Path:
    """Train as ``config`` says into ``out_dir``; returns the path of the best model file.

    An earlier run in ``out_dir`` is continued with ``resume``, replaced with ``overwrite``, and
    otherwise left alone (an error). ``extra_train`` adds arrays built elsewhere (pseudo-labels),
    ``record`` what the model file's provenance says of them beside the config.
    ``how_to_go_on``: what a stopped run tells the user to do, in the words of the command
    that called (only ``train`` and ``finetune`` take --resume).
    """
    try:
        with torch_threads(config.train.threads):
            return _train(config, out_dir, resume, overwrite, extra_train, record,
                          how_to_go_on)
    except KeyboardInterrupt:
        _say_what_is_kept(out_dir, how_to_go_on)
        raise
    except RuntimeError as exc:
        stopped = ddp.peer_stopped(exc)
        if stopped is None:
            raise
        raise stopped from exc


def _say_what_is_kept(out_dir: Path, how_to_go_on: str) -> None:
    """On Ctrl-C or SIGTERM, say which epoch the run folder's checkpoint keeps and how to go
    on: the command's own last line only says that no half-written file was kept."""
    checkpoint = out_dir / "checkpoint.safetensors"
    if ddp.launched_rank() != 0:
        return
    if not checkpoint.exists():
        log.warning(f"stopped before the first epoch ended: no epoch is kept in {out_dir}")
        return
    epoch = saved_state(checkpoint).get("epoch")
    log.warning(f"stopped after epoch {epoch}: {checkpoint} keeps it; {how_to_go_on}")


def _train(config: RunConfig, out_dir: Path, resume: bool, overwrite: bool,
           extra_train: Sequence[SceneArrays], record: dict | None,
           how_to_go_on: str) -> Path:
    """:func:`train`, which reports what an interruption left."""
    settings = config.train
    if settings.members > 1:
        raise SlidemapError(f"training.members: {settings.members} trains an ensemble with "
                            "slidemap train; fine-tuning and self-training train one network: "
                            "set members: 1")
    ranks = ddp.setup()  # under torchrun: one of WORLD_SIZE data-parallel processes
    if ranks.world > 1 and settings.frozen_epochs:  # DDP fixes the trained weights when wrapping
        raise SlidemapError("training.frozen_epochs changes which weights train mid-run, which "
                            "data-parallel training cannot follow: run it without torchrun")
    check_buildable(config, f"config {config.source}" if config.source else "config",
                    ranks.world)
    check_run_inputs(out_dir, config)
    _prepare_run_folder(out_dir, resume, overwrite, how_to_go_on)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()

    checkpoint = out_dir / "checkpoint.safetensors"
    if resume:  # before anything is built or loaded: say which setting changed
        check_same_run(saved_state(checkpoint).get("config"), config, out_dir)
    train_scenes = load_arrays(config.train_scenes, config.train_patches, config.inputs)
    train_scenes += extra_train
    _warn_if_train_has_no_landslides(train_scenes, ranks.main)
    val_scenes = load_arrays(config.val_scenes, config.val_patches, config.inputs)
    _check_val_has_landslides(val_scenes, settings.select, ranks.main)
    stats = scene_stats(train_scenes)
    check_channels_vary(stats, config.inputs.channels)
    recipes = build_recipes(config, train_scenes, stats)
    windows = RandomWindows(train_scenes, stats, settings.tile, settings.windows_per_epoch,
                            settings.min_valid, settings.augment, settings.seed, recipes,
                            settings.domain_batches)

    model = initial_model(config).to(  # type: ignore[call-overload]  # stubs lack it
        memory_format=torch.channels_last)
    loss_fn = build_loss(config.loss)
    groups = parameter_groups(model, settings.lr, settings.encoder_lr)
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-settings.windows_per_epoch // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in groups],
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=warm_up_fraction(settings.epochs * steps_per_epoch), anneal_strategy="cos")

    average = WeightAverage(model) if settings.average_from else None
    state: dict[str, Any] = {"epoch": 0, "best_f1": -math.inf, "best_epoch": 0, "seconds": 0.0,
                             "wall_seconds": 0.0, "config": run_identity(config)}
    if resume:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if average is not None and state.get("averaged_steps"):
            average.restore(load_extra(checkpoint, PREFIX), state["averaged_steps"])
        if ranks.main:  # rank 0 alone writes the files
            _trim_history(out_dir / "history.csv", state["epoch"])
            log.info(f"resuming after epoch {state['epoch']}")
    earlier_wall = _earlier_wall_seconds(state)

    _warn_if_validation_is_trained_on(config, ranks.main)  # once the run can start
    if ranks.main:  # every message is rank 0's: N processes said this N times
        log.info(f"{config.model.name} ({count_parameters(model):,} parameters), "
                 f"{len(config.inputs.channels)} channels {config.inputs.channels}, "
                 f"{_count(settings.epochs, 'epoch')} × {_count(steps_per_epoch, 'step')}")
    history_path = out_dir / "history.csv"
    trained = ddp.wrap(model, ranks)
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        torch.manual_seed(settings.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]  # of the epoch's first step (after its last: past the end)
        set_encoder_for_epoch(model, config, epoch)
        if recipes is not None:
            recipes.start_epoch(model, epoch)
        after_step = None
        if average is not None and epoch >= (settings.average_from or 0):
            after_step = functools.partial(average.update, model)
        train_loss = ddp.mean(_train_epoch(trained, ddp.shard(windows, ranks), epoch,
                                           settings.batch_size, loss_fn, optimizer, scheduler,
                                           settings.precision, steps_per_epoch, after_step),
                              ranks)
        if not math.isfinite(train_loss):
            raise SlidemapError(f"training diverged in epoch {epoch} (loss {train_loss}): no "
                                f"model was saved from it; lower training.lr (now "
                                f"{settings.lr:g}) or check the inputs for extreme values")
        scores = evaluate_arrays(model, val_scenes, stats, config) \
            if val_scenes and ranks.main else {}
        state["seconds"] += time.perf_counter() - t0
        if not ranks.main:  # rank 0 alone scores, keeps history and writes files
            continue
        row = {"epoch": epoch, "train_loss": round(train_loss, 5),
               "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
               **_val_columns(scores), **({"weights": "epoch"} if average is not None else {})}
        _append_history(history_path, row, fresh=epoch == 1)
        log.info("  ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in row.items()))  # lr 8e-05, not 7.999999999999999e-05
        f1 = scores.get("f1", -train_loss)
        chosen = epoch == settings.epochs if settings.select == "last" else f1 > state["best_f1"]
        if chosen:
            kept = model
            if average is not None:  # the last epoch: the averaged weights become the model
                averaging = time.perf_counter()
                refresh = (batch["x"] for batch in windows.epoch(epoch + 1, settings.batch_size))
                kept = average.averaged(model, refresh, settings.precision)
                scores = evaluate_arrays(kept, val_scenes, stats, config) if val_scenes else {}
                f1 = scores.get("f1", f1)
                _append_history(history_path, _averaged_row(row, scores, averaging), fresh=False)
            state.update(best_f1=f1, best_epoch=epoch)
            _save_bundle(kept, config, stats, out_dir / "best", state, scores, record or {})
        state["epoch"] = epoch
        state["wall_seconds"] = earlier_wall + time.perf_counter() - started
        extra = None
        if average is not None:
            state["averaged_steps"] = average.count
            extra = average.tensors()
        save_checkpoint(checkpoint, model, optimizer, scheduler, state, extra)

    ddp.finish(ranks)
    if not ranks.main:
        return out_dir / "model.safetensors"
    summary = {"best_epoch": state["best_epoch"],  # no F1 without validation data
               "best_val_f1": state["best_f1"] if val_scenes else None,
               "train_seconds": round(state["seconds"], 1),
               "wall_seconds": round(earlier_wall + time.perf_counter() - started, 1)}
    _publish(out_dir, summary)
    plot_training_curves(out_dir)
    how = _how_kept(settings.select, bool(val_scenes))
    if average is not None:
        how = f"weights averaged over epochs {settings.average_from}-{settings.epochs}"
    figure = f", val F1 {state['best_f1']:.4f}" if val_scenes else ""
    log.info(f"kept epoch {state['best_epoch']} ({how}{figure}) → "
             f"{out_dir / 'model.safetensors'}")
    return out_dir / "model.safetensors"


def _val_columns(scores: dict[str, float]) -> dict[str, float]:
    """The validation figures a history row records."""
    return {f"val_{k}": round(v, 5) for k, v in scores.items()
            if k in ("f1", "iou", "precision", "recall", "auc")}


def _averaged_row(last: dict, scores: dict[str, float], started: float) -> dict:
    """The history row of the averaged weights, which the model file keeps: the last epoch's
    row stands for its own weights, whose figures are not the file's. Marked ``weights:
    averaged``, at the last epoch (a resume trims it with that epoch's row); no loss or rate of
    its own; its seconds those of the BatchNorm refresh and the scoring."""
    return {**dict.fromkeys(last, ""), "epoch": last["epoch"],
            "seconds": round(time.perf_counter() - started, 1), **_val_columns(scores),
            "weights": "averaged"}


def _earlier_wall_seconds(state: dict[str, Any]) -> float:
    """The wall time that earlier sessions of a resumed run spent up to the checkpoint's epoch,
    so that ``summary.json``'s ``wall_seconds`` is the whole run's like ``train_seconds``
    (a resumed run's last session alone read 4 s beside 12 s of training). A checkpoint
    written before it was kept counts its training seconds, the least that wall time was."""
    return float(state.get("wall_seconds", state["seconds"]))


def _how_kept(select: str, validated: bool) -> str:
    """How the kept epoch was chosen, as the summary line says it: without validation data
    ``select: best`` goes by the lowest training loss, which is no F1 of anything."""
    if select == "last":
        return "the last"
    return "best by val F1" if validated else "lowest training loss: no validation data"


def warm_up_fraction(total_steps: int) -> float:
    """The share of steps over which the one-cycle schedule warms the learning rate up: a
    tenth, except where that is exactly one step, for which torch's OneCycleLR divides by
    zero (its warm-up then ends on the step it starts), so a run of ten steps warms up over
    two."""
    return 2 / total_steps if WARM_UP * total_steps == 1 else WARM_UP


def _check_val_has_landslides(val_scenes: Sequence[SceneArrays], select: str,
                              main: bool) -> None:
    """Validation data without a landslide pixel has no F1 (it scores 0 whatever the network
    maps), so ``select: best`` would keep epoch 1, the least trained, as "best by val F1":
    refuse it before training; with ``select: last`` only the figures are void, so say so."""
    if not val_scenes or any((item.target == 1).any() for item in val_scenes):
        return
    problem = ("data.val has no landslide pixel, so its F1 is undefined (0 at every epoch): "
               "labels are 0 background, 1 landslide and 255 ignore (recode a 0/255 mask), or "
               "validate on ground with landslides")
    if select == "best":
        raise SlidemapError(f"{problem}; select: best cannot choose an epoch by it (set "
                            "training.select: last to keep the last)")
    if main:
        warnings.warn(f"{problem}; the val figures in history.csv say nothing", SlidemapWarning,
                      stacklevel=3)


def _warn_if_train_has_no_landslides(train_scenes: Sequence[SceneArrays], main: bool) -> None:
    """Training data without a landslide pixel (an AOI drawn beside the polygons, labels of
    another scene) teaches that there are none: the model maps nothing. newsite refuses such
    polygons; a run config, such as newsite's config.yaml edited, is warned (background-only
    data alone may be meant, e.g. to fine-tune away false alarms)."""
    if main and not any((item.target == 1).any() for item in train_scenes):
        warnings.warn("data.train has no landslide pixel (label 1, inside the area of interest "
                      "where a scene has one): the model learns that there are none and maps "
                      "none; check that the labels and areas of interest are of this ground",
                      SlidemapWarning, stacklevel=3)


def _warn_if_validation_is_trained_on(config: RunConfig, main: bool) -> None:
    """Validation on training ground estimates nothing about new ground, and with ``select:
    best`` it picks the epoch that fits the training data best: say so (a warning, since a
    quick look at fit on one scene is a fair use)."""
    shared = shared_with_training((config.train_scenes, config.train_patches),
                                  (config.val_scenes, config.val_patches), config.inputs)
    if shared is None or not main:
        return
    picks = (", and select: best picks the kept epoch on it" if config.train.select == "best"
             else "")
    warnings.warn(f"validation data is also training data ({shared}): its figures say nothing "
                  f"about unseen ground{picks}; validate on other ground", SlidemapWarning,
                  stacklevel=2)


def _publish(out_dir: Path, summary: dict) -> None:
    """Publish the kept epoch's model file and the summary as one set. A ``finetune.json``
    already in the folder is of an earlier run (fine-tuning writes its own once this returns):
    it goes first, so that the before/after figures of another model never lie beside this
    one (a run from scratch with ``--overwrite`` kept the fine-tuning's it replaced)."""
    drop_finetune_record(out_dir)
    best_weights, best_sidecar = model_paths(out_dir / "best")
    weights, sidecar = model_paths(out_dir / "model")
    with staged({"weights": weights, "sidecar": sidecar,
                 "summary": out_dir / "summary.json"}) as tmp:
        shutil.copyfile(best_weights, tmp["weights"])
        shutil.copyfile(best_sidecar, tmp["sidecar"])
        tmp["summary"].write_text(jsontext.dumps(summary, indent=2) + "\n")


def _prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool,
                        how_to_go_on: str) -> None:
    """Check the run folder for a resume, or make it for a new run. An earlier run is refused
    with the advice the calling command can follow: only one that takes --resume names it."""
    checkpoint = out_dir / "checkpoint.safetensors"
    if resume:
        if not checkpoint.exists():
            raise SlidemapError(f"nothing to resume in {out_dir} (no checkpoint.safetensors): "
                                "train without --resume, or pass the --out of the stopped run")
        return
    # any file a run writes, not only its weights and history: a summary.json or curves.png
    # already there (an earlier run's, or the user's own) was replaced without --overwrite
    earlier = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    if earlier and not overwrite:
        advice = "--resume to continue it, --overwrite to replace it" \
            if how_to_go_on == RESUME else "--overwrite to replace it"
        raise SlidemapError(f"run folder {out_dir} already holds a run ({earlier[0]}): pass "
                            f"{advice}, or another --out")
    make_output_dir(out_dir, "run folder")
    # Never resume a replaced run, nor publish its kept epoch.
    for name in ("checkpoint.safetensors", "checkpoint.json", "best.safetensors", "best.json"):
        (out_dir / name).unlink(missing_ok=True)


def _trim_history(path: Path, epoch: int) -> None:
    """Drop history rows after the checkpoint's epoch (a run stopped before saving it), and
    blank lines (an editor's); a row that starts with no epoch number is refused, as the
    curves and the row count would be wrong."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [line for line in lines[1:]
                        if line.strip() and _history_epoch(path, line) <= epoch]
    if len(keep) != len(lines):
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            handle.write("".join(keep))


def _history_epoch(path: Path, line: str) -> int:
    """The epoch a history row is of (its first field)."""
    first = line.split(",", 1)[0].strip()
    if not first.isdigit():
        raise SlidemapError(f"{path} has a row that is not of an epoch ({line.strip()[:40]!r}): "
                            "remove that line (or the file) and resume again")
    return int(first)


def _train_epoch(model: torch.nn.Module, windows: RandomWindows | ddp.ShardedWindows,
                 epoch: int, batch_size: int,
                 loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, precision: str,
                 steps: int, after_step: Callable[[], None] | None = None) -> float:
    with Progress(TextColumn(f"epoch {epoch}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not (console.is_terminal and log.isEnabledFor(logging.INFO))
                  ) as progress:
        task = progress.add_task("train", total=steps)

        def step_done() -> None:
            if after_step is not None:
                after_step()
            progress.advance(task)

        losses = train_steps(model, windows.epoch(epoch, batch_size), loss_fn, optimizer,
                             scheduler, precision, step_done)
    return float(np.mean(losses))


def train_steps(model: torch.nn.Module, batches: Iterable[dict[str, np.ndarray]],
                loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, precision: str,
                after_step: Callable[[], None] | None = None) -> list[float]:
    """One optimiser step per batch, in train mode; the loss of each. Epochs call it, and so
    does scene adaptation, whose batches stop when its time or window count runs out."""
    model.train()
    losses = []
    for batch in batches:
        x = torch.from_numpy(batch["x"]).to(memory_format=torch.channels_last)
        target = torch.from_numpy(batch["target"])
        valid = torch.from_numpy(batch["valid"])
        with autocast(precision):
            logits = model(x)
        loss = loss_fn(logits.float(), target, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
    return losses


def evaluate_arrays(model: torch.nn.Module, arrays: list[SceneArrays], stats: BandStats,
                    config: RunConfig) -> dict[str, float]:
    """The one scorer's figures for the network being trained, run as its model file will be
    (``config.predict``: window, overlap, scales, threshold; the weights rounded as
    ``weights_dtype`` stores them) and counted on each item's own grid, so the kept epoch's
    line in history.csv is what ``finetune``, ``study`` and ``evaluate`` report."""
    bundle = bundle_of(as_stored(model, config.train.weights_dtype), config.model.name,
                       config.model.width, config.model.options, config.inputs, stats,
                       config.predict.threshold, _predict_defaults(config))
    return score_bundle(bundle, arrays, config.train.precision,
                        config.predict.batch_size).metrics()


def _predict_defaults(config: RunConfig) -> PredictDefaults:
    """What the model file will carry: prediction runs as validation ran."""
    return PredictDefaults(config.predict.tile, config.predict.overlap, config.predict.scales)


def _count(number: int, noun: str) -> str:
    """``number`` ``noun``s, in the singular for one ("1 epochs × 1 steps" read wrong)."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def recorded_config(config: RunConfig) -> dict[str, Any]:
    """``config`` as a model file's provenance records it: an ``init`` that names a shipped
    model bare as that model's absolute path, as ``finetune NAME`` records it, so that the
    lineage is followed to the file it started from from any folder (the name alone is taken
    for a model file of that name in the folder that reads it)."""
    recorded = config.to_dict()
    if config.init is not None:
        recorded["init"] = str(model_source(config.init))
    return recorded


def _save_bundle(model: torch.nn.Module, config: RunConfig, stats: BandStats, path: Path,
                 state: dict, scores: dict, record: dict) -> None:
    bundle = ModelBundle(
        model=model, architecture=config.model.name, width=config.model.width,
        options=dict(config.model.options), inputs=config.inputs, mean=list(stats.mean),
        std=list(stats.std), threshold=config.predict.threshold,
        provenance={"config": recorded_config(config), "epoch": state["best_epoch"],
                    "validation": {k: scores[k] for k in
                                   ("precision", "recall", "f1", "iou", "miou", "auc")
                                   if k in scores},
                    "torch": torch.__version__, **record},
        weights_dtype=config.train.weights_dtype,
        predict=_predict_defaults(config), members=count_members(model),
    )
    save_model(bundle, path)


def _append_history(path: Path, row: dict, fresh: bool) -> None:
    """Add ``row`` to the history, rewritten whole under a temporary name as every output is:
    written in place, it went through a hard link (a ``cp -al`` snapshot of the run folder)
    or a symbolic link into the file shared with it."""
    earlier = "" if fresh or not path.exists() else _read_history(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        handle.write(earlier)
        # one line ending throughout, as _trim_history rewrites the rows a resume keeps
        writer = csv.DictWriter(handle, fieldnames=list(row), lineterminator="\n")
        if not earlier:
            writer.writeheader()
        writer.writerow(row)


def _read_history(path: Path) -> str:
    """The history's text, its line endings as stored."""
    with path.open(newline="") as handle:
        return handle.read()
