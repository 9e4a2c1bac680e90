"""What a run folder holds, and the check that none of it replaces a file the run reads."""

from __future__ import annotations

import contextlib
from pathlib import Path

from slidemap.errors import SlidemapError
from slidemap.io.atomic import check_outputs, folder_lock
from slidemap.io.modelfile import model_paths
from slidemap.schema.config import RunConfig
from slidemap.train import ddp

RUN_FILES = ("checkpoint.safetensors", "model.safetensors", "best.safetensors", "history.csv")
RUN_OUTPUTS = (*RUN_FILES, "checkpoint.json", "model.json", "best.json", "summary.json",
               "curves.png", "finetune.json")


def check_run_inputs(out_dir: Path, config: RunConfig) -> None:
    """Refuse a run folder where an output would replace one of the run's inputs (its config,
    a scene's raster, the model it starts from), with or without ``--overwrite``."""
    inputs = [*config.input_files(), *(model_paths(config.init) if config.init else [])]
    check_outputs([out_dir / name for name in RUN_OUTPUTS], inputs, overwrite=True)


def run_identity(config: RunConfig) -> dict:
    """What a resumed run must share with the run it continues (kept in the checkpoint): the
    whole config but its name and the thread count, neither of which changes the weights or
    how validation scored the epochs before the stop."""
    identity = config.model_dump(mode="json", exclude={"name"})
    identity["training"].pop("threads", None)
    return identity


def check_same_run(saved: dict | None, config: RunConfig, out_dir: Path) -> None:
    """Refuse to resume the run in ``out_dir`` with another config: the epochs after the stop
    would train otherwise than the ones before, and the model file would credit the whole run
    to the new config. ``saved`` None: a checkpoint written before runs recorded it."""
    if saved is None:
        return
    changed = _differences(saved, run_identity(config))
    if changed:
        raise SlidemapError(f"run folder {out_dir} was trained with another {changed[0]} "
                            f"({len(changed)} setting(s) differ): resume with the config and "
                            "--set options that started it, or pass --overwrite to start again")


def _differences(a: object, b: object, key: str = "") -> list[str]:
    """Dotted keys where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for name in sorted(set(a) | set(b), key=str)
                for k in _differences(a.get(name), b.get(name), f"{key}.{name}".lstrip("."))]
    return [] if a == b else [key or "config"]


def run_lock(out_dir: Path) -> contextlib.AbstractContextManager:
    """One run at a time in ``out_dir`` (:func:`slidemap.io.atomic.folder_lock`); the other
    ranks of a torchrun launch work under rank 0's lock."""
    if ddp.launched_rank() != 0:
        return contextlib.nullcontext()
    return folder_lock(out_dir, "run folder")
