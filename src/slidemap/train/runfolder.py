"""What a run folder holds, and the check that none of it replaces a file the run reads."""

from __future__ import annotations

from pathlib import Path

from slidemap.io.atomic import check_outputs
from slidemap.io.modelfile import model_paths
from slidemap.schema.config import RunConfig

RUN_FILES = ("checkpoint.safetensors", "model.safetensors", "best.safetensors", "history.csv")
RUN_OUTPUTS = (*RUN_FILES, "checkpoint.json", "model.json", "best.json", "summary.json",
               "curves.png", "finetune.json")


def check_run_inputs(out_dir: Path, config: RunConfig) -> None:
    """Refuse a run folder where an output would replace one of the run's inputs (its config,
    a scene's raster, the model it starts from), with or without ``--overwrite``."""
    inputs = [*config.input_files(), *(model_paths(config.init) if config.init else [])]
    check_outputs([out_dir / name for name in RUN_OUTPUTS], inputs, overwrite=True)
