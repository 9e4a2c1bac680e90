"""What a run folder holds, and the check that none of it replaces a file the run reads."""

from __future__ import annotations

import contextlib
from pathlib import Path

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


def run_lock(out_dir: Path) -> contextlib.AbstractContextManager:
    """One run at a time in ``out_dir`` (:func:`slidemap.io.atomic.folder_lock`); the other
    ranks of a torchrun launch work under rank 0's lock."""
    if ddp.launched_rank() != 0:
        return contextlib.nullcontext()
    return folder_lock(out_dir, "run folder")
