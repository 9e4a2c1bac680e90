"""Train an ensemble: ``training.members`` networks, one seed each, saved as one model file.

Each member is an ordinary run (``OUT/member-K``, seed ``training.seed + K``) and the members
train side by side in separate processes at ``training.threads`` each (:func:`parallel_members`),
so two single-threaded members take about the wall time of one on a 2-core machine. Member 0
reports to the terminal; the others write ``member-K/train.log``. ``OUT/model.safetensors``
then holds all members and averages their probabilities.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import cast

import torch

from slidemap.data.machine import cpu_cores
from slidemap.errors import SlidemapError
from slidemap.io import jsontext
from slidemap.io.modelfile import ModelBundle, load_model, save_model
from slidemap.logs import LOGGER, show_messages
from slidemap.models import ProbabilityAverage, SegmentationModel
from slidemap.schema.config import RunConfig
from slidemap.train.loop import train
from slidemap.train.runfolder import check_run_inputs, drop_finetune_record


def train_members(config: RunConfig, out_dir: Path, resume: bool = False,
                  overwrite: bool = False) -> Path:
    """Train ``config.train.members`` networks into ``out_dir/member-K`` and write their
    ensemble to ``out_dir/model.safetensors``; returns that path."""
    count = config.train.members
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SlidemapError("training.members trains its members as separate processes: run it "
                            "without torchrun, or set members: 1")
    check_run_inputs(out_dir, config)
    model_path = out_dir / "model.safetensors"
    if model_path.exists() and not (resume or overwrite):
        raise SlidemapError(f"run folder {out_dir} already holds a model: pass --resume to "
                            "continue it, --overwrite to replace it, or another --out")
    started = time.perf_counter()
    runs = [(member_config(config, index), out_dir / f"member-{index}", index)
            for index in range(count)]
    if resume and not any(_has_checkpoint(run_dir) for _, run_dir, _ in runs):
        raise SlidemapError(f"nothing to resume in {out_dir} (no member-K/checkpoint.safetensors):"
                            " train without --resume, or pass the --out of the stopped run")
    others = set(multiprocessing.active_children())  # the caller's, not the members'
    with ProcessPoolExecutor(parallel_members(config), mp_context=get_context("spawn"),
                             initializer=stop_on_signal) as pool:
        level = logging.getLogger(LOGGER).getEffectiveLevel()
        futures = [pool.submit(_train_member, run_config, run_dir, index,
                               *member_start(run_dir, resume, overwrite), level)
                   for run_config, run_dir, index in runs]
        paths = collect(futures, spared=others)
    summary = {"members": [json.loads((path.parent / "summary.json").read_text())
                           for path in paths],
               "wall_seconds": round(time.perf_counter() - started, 1)}
    # The ensemble's model file and summary appear together, or neither is replaced.
    drop_finetune_record(out_dir)
    save_model(ensemble_bundle([load_model(path) for path in paths], config), out_dir / "model",
               companions={out_dir / "summary.json": jsontext.dumps(summary, indent=2) + "\n"})
    return model_path


def collect(futures: Sequence[Future[Path]], spared: Collection[BaseProcess] = ()
            ) -> list[Path]:
    """The members' results. Stopped here (Ctrl-C, or SIGTERM, which the command raises as
    Ctrl-C), members not started are cancelled and the running ones are stopped as the
    command is: a SIGTERM reached this process alone, and the pool waited for its members to
    train to their last epoch, then exited 143 without the ensemble (``timeout`` ran on).
    ``spared``: child processes that were there before the members' (an API caller's own)."""
    try:
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        for child in multiprocessing.active_children():
            if child not in spared:
                child.terminate()
        raise


_STOPPED = threading.Event()  # in a member's process: a stop has been asked for


def stop_on_signal() -> None:
    """In a member's process: end its run on SIGTERM or Ctrl-C as the command ends its own
    (the checkpoint of the last finished epoch kept, and said), once; a member the pool hands
    it after that stops at once."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_member)


def _stop_member(signum: int, frame: object) -> None:
    if not _STOPPED.is_set():  # Ctrl-C reaches the process group, and the command's SIGTERM
        _STOPPED.set()         # follows: one stop, so the first one's clean-up runs
        raise KeyboardInterrupt


def member_start(run_dir: Path, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """How one member's run starts, as (resume, overwrite): a resumed ensemble stopped before
    a member ended its first epoch (members beyond the first round not yet started) starts that
    member afresh, its folder's leftovers replaced, where resuming it found nothing to resume
    and training without --resume refused the members that had a checkpoint."""
    if resume and not _has_checkpoint(run_dir):
        return False, True
    return resume, overwrite


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.safetensors").exists()


def member_config(config: RunConfig, index: int) -> RunConfig:
    """Member ``index``'s run: the same recipe, one network, seed ``training.seed + index``."""
    settings = config.train.changed(seed=config.train.seed + index, members=1)
    return config.changed(train=settings)


def member_config_record(config: dict, seed: int) -> dict:
    """What :func:`member_config` makes of an ensemble's recorded run config (``config``, its
    plain-data view) for the member trained with ``seed``: a network pulled out of an ensemble
    file then records the run that trained it, which the file keeps only as its seed."""
    return {**config, "training": {**config["training"], "seed": seed, "members": 1}}


def parallel_members(config: RunConfig) -> int:
    """How many members train at once. All of them while that asks at most two threads per
    core: sharing the cores finishes sooner than a last round that leaves some idle (three
    single-threaded members on two cores: about 1.5 networks' time instead of 2). Beyond that,
    one per ``training.threads`` cores; one if ``threads`` is unset, as such a run uses every
    core."""
    cores, threads, count = cpu_cores(), config.train.threads, config.train.members
    if not threads:
        return 1
    if count * threads <= 2 * cores:
        return count
    return max(1, cores // threads)


def ensemble_bundle(bundles: list[ModelBundle], config: RunConfig) -> ModelBundle:
    """One model file for ``bundles``, trained alike on the same data: the first one's settings
    and the members' weights; each member's seed, epoch, validation figures and file, from
    which a member pulled out alone records its own run (``slidemap export --member``)."""
    first = bundles[0]
    for bundle in bundles[1:]:
        if (bundle.mean, bundle.std, bundle.inputs) != (first.mean, first.std, first.inputs):
            raise SlidemapError(f"members {first.path} and {bundle.path} were trained on "
                                "different inputs: an ensemble averages networks that read "
                                "the same channels with the same normalisation")
    provenance = {"config": config.to_dict(), "torch": torch.__version__,
                  "members": [{"seed": b.provenance["config"]["training"]["seed"],
                               "epoch": b.provenance.get("epoch"),
                               "validation": b.provenance.get("validation"), "file": str(b.path)}
                              for b in bundles]}
    networks = cast(list[SegmentationModel], [b.model for b in bundles])  # one network each
    return replace(first, model=ProbabilityAverage(networks),
                   members=len(bundles), provenance=provenance, path=None)


def _train_member(config: RunConfig, out_dir: Path, index: int, resume: bool,
                  overwrite: bool, level: int) -> Path:
    """Worker: one member's run, its messages at the parent's ``level`` (a spawned process
    starts with logging unconfigured); members after the first log to their run folder."""
    if _STOPPED.is_set():
        raise KeyboardInterrupt
    if index == 0:
        show_messages(level)
        return train(config, out_dir, resume=resume, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "train.log").open("a") as log, contextlib.redirect_stderr(log):
        show_messages(min(level, logging.INFO))  # the handler writes to the redirected stderr
        return train(config, out_dir, resume=resume, overwrite=overwrite)
