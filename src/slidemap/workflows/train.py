"""``slidemap train``: one run config into a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.schema.config import RunConfig, load_config, with_seed
from slidemap.train.finetune import finetune
from slidemap.train.loop import train
from slidemap.train.members import train_members
from slidemap.train.runfolder import check_resume_or_overwrite, run_lock


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model: Path  # the model file the run published


def train_config(config: Path, out_dir: Path, resume: bool = False, overwrite: bool = False,
                 seed: int | None = None, overrides: tuple[str, ...] = ()) -> TrainResult:
    """Train as the YAML run config at ``config`` says, with ``overrides`` (``KEY=VALUE``)
    applied (``seed`` replaces its ``training.seed``)."""
    check_resume_or_overwrite(resume, overwrite)
    run_config = with_seed(load_config(config, overrides), seed)
    return TrainResult(out_dir, train_run(run_config, out_dir, resume=resume,
                                          overwrite=overwrite))


def train_run(config: RunConfig, out_dir: Path, resume: bool = False,
              overwrite: bool = False) -> Path:
    """An ensemble when the config asks for several members, a fine-tuning with its
    before/after figures when it starts from a model and has validation data, plain training
    otherwise; returns the model file written."""
    if config.train.members > 1:
        with run_lock(out_dir):
            return train_members(config, out_dir, resume=resume, overwrite=overwrite)
    if config.init is not None and (config.val_scenes or config.val_patches):
        return Path(finetune(config, out_dir, resume=resume, overwrite=overwrite)["model"])
    with run_lock(out_dir):
        return train(config, out_dir, resume=resume, overwrite=overwrite)
