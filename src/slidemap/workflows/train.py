"""``slidemap train``: one run config into a run folder."""

from __future__ import annotations

from pathlib import Path

from slidemap.train.config import RunConfig
from slidemap.train.finetune import finetune
from slidemap.train.loop import train
from slidemap.train.members import train_members
from slidemap.train.runfolder import run_lock


def train_run(config: RunConfig, out_dir: Path, resume: bool = False,
              overwrite: bool = False) -> None:
    """An ensemble when the config asks for several members, a fine-tuning with its
    before/after figures when it starts from a model and has validation data, plain training
    otherwise."""
    if config.train.members > 1:
        with run_lock(out_dir):
            train_members(config, out_dir, resume=resume, overwrite=overwrite)
    elif config.init is not None and (config.val_scenes or config.val_patches):
        finetune(config, out_dir, resume=resume, overwrite=overwrite)
    else:
        with run_lock(out_dir):
            train(config, out_dir, resume=resume, overwrite=overwrite)
