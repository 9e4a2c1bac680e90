"""What a run folder holds, and the check that none of it replaces a file the run reads."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from slidemap.data.patches import open_patch_dataset
from slidemap.errors import SlidemapError, UsageError
from slidemap.io.atomic import check_outputs, folder_lock, resolved
from slidemap.io.modelfile import source_paths
from slidemap.schema.config import RunConfig
from slidemap.train import ddp

# Settings that a command-line option sets beside the config and its --set options.
OPTIONS = {"training.freeze_encoder": "--freeze-encoder", "training.seed": "--seed",
           "init": "MODEL (finetune's first argument)"}
VALUE_CHARS = 60  # the longest value a refusal to resume quotes
FINETUNE_RECORD = "finetune.json"  # a fine-tuning's figures before and after, beside its model
RUN_OUTPUTS = ("checkpoint.safetensors", "model.safetensors", "best.safetensors", "history.csv",
               "checkpoint.json", "model.json", "best.json", "summary.json", "curves.png",
               FINETUNE_RECORD)


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """``--resume`` continues the run in the folder and ``--overwrite`` starts it again: given
    both, a resume ran and the overwrite was dropped, so the refusal of a changed config, which
    says to pass --overwrite, came back word for word once it was added."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: "
                         "pass one of them")


def drop_finetune_record(out_dir: Path) -> None:
    """Remove a ``finetune.json`` of an earlier run before a model is published in ``out_dir``
    (fine-tuning writes its own once the model is out): the before/after figures of the model
    a run replaces with ``--overwrite`` must not lie beside the new one, be it a single
    network or an ensemble."""
    (out_dir / FINETUNE_RECORD).unlink(missing_ok=True)


def check_run_inputs(out_dir: Path, config: RunConfig) -> None:
    """Refuse a run folder where an output would replace one of the run's inputs (its config,
    a scene's raster, the model it starts from), with or without ``--overwrite``."""
    inputs = [*config.input_files(), *(source_paths(config.init) if config.init else [])]
    check_outputs([out_dir / name for name in RUN_OUTPUTS], inputs, overwrite=True)
    check_not_in_patch_folders(out_dir, config)


def check_not_in_patch_folders(out_dir: Path, config: RunConfig) -> None:
    """Refuse a run folder that a patch set of the config reads its patches from
    (``images/``, ``masks/``, ``dem/``): the run's curves.png there replaced a patch of that
    name, or was read as a patch by every later run, which refused the set ('has no mask').
    A Landslide4Sense split reads only its ``.h5`` files."""
    sources = (*config.train_patches, *config.val_patches,
               *(config.selftrain.target_patches if config.selftrain else ()))
    folder = resolved(out_dir)
    for source in sources:
        if source.kind == "patches" and open_patch_dataset(source.root).reads_from(folder):
            raise SlidemapError(f"--out {out_dir} is a folder the patches of {source.root} are "
                                "read from: the run's curves.png there would replace or be "
                                "read as a patch; choose another --out")


def run_identity(config: RunConfig) -> dict:
    """What a resumed run must share with the run it continues (kept in the checkpoint): the
    whole config but its name, the thread count and the ``crossval`` section (which seeds a
    protocol runs), none of which changes the weights or how validation scored the epochs
    before the stop."""
    identity = config.model_dump(mode="json", exclude={"name", "crossval"})
    identity["training"].pop("threads", None)
    return identity


def check_same_run(saved: dict | None, config: RunConfig, out_dir: Path) -> None:
    """Refuse to resume the run in ``out_dir`` with another config: the epochs after the stop
    would train otherwise than the ones before, and the model file would credit the whole run
    to the new config. ``saved`` None: a checkpoint written before runs recorded it."""
    if saved is None:
        return
    saved = {k: v for k, v in saved.items() if k != "crossval"}  # as checkpoints once kept it
    changed = _differences(saved, run_identity(config))
    if changed:
        options = ["the config", "--set options",
                   *(OPTIONS[key] for key in changed if key in OPTIONS)]
        raise SlidemapError(f"run folder {out_dir} was trained with another {changed[0]} "
                            f"({_value_at(saved, changed[0])}, now "
                            f"{_value_at(run_identity(config), changed[0])}; {len(changed)} "
                            "setting(s) differ): resume with "
                            f"{', '.join(options[:-1])} and {options[-1]} that started it, or "
                            "pass --overwrite instead of --resume to start again")


def _value_at(identity: dict, key: str) -> str:
    """The value at dotted ``key`` of a run identity, as JSON writes it (``true``, not
    ``True``, as in the config), so that the refusal says which way it differs; cut short
    where it is long (a list of scenes) to keep the refusal one readable line."""
    value: object = identity
    for name in key.split("."):
        value = value.get(name) if isinstance(value, dict) else None
    text = json.dumps(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


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
