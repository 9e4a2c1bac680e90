"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A checkpoint holds model and optimiser tensors, the optimiser's and scheduler's plain settings, the
epoch reached and the best score so far. Batches are drawn from (seed, epoch), so this is all a
resumed run needs to end with the same weights as an uninterrupted one.

The settings travel inside the safetensors file's metadata, so tensors and settings are replaced
by one atomic rename: a run killed while saving can never pair epoch N's tensors with epoch N-1's
settings. ``NAME.json`` beside it is a readable copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from slidemap.errors import SlidemapError, first_line
from slidemap.io.atomic import atomic_path

META_KEY = "slidemap_checkpoint"


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``path`` (.safetensors, settings in its metadata) and a readable ``.json`` copy.

    ``extra`` tensors (named apart from ``model.`` and ``optim.``) are kept beside the model's,
    for :func:`load_extra`.
    """
    tensors = {f"model.{k}": v.detach().contiguous().clone()
               for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous() for k, v in (extra or {}).items()})
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for index, slots in opt_state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"state": state, "param_groups": opt_state["param_groups"],
            "optim_scalars": scalars, "scheduler": scheduler.state_dict()}
    text = json.dumps(meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: text})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(text)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore model, optimiser and scheduler in place; return the saved run state."""
    try:
        return _load_checkpoint(path, model, optimizer, scheduler)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            RuntimeError) as exc:
        raise SlidemapError(f"checkpoint {path} cannot be resumed ({first_line(exc)}): resume "
                            "with the config that wrote it, or train without --resume") from exc


def saved_state(path: Path) -> dict:
    """The run state a checkpoint holds (epoch, best score, the run's config), without loading
    its tensors: what a resume checks before it builds anything."""
    try:
        return _read_meta(path)["state"]
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SlidemapError(f"checkpoint {path} cannot be resumed ({first_line(exc)}): train "
                            "without --resume") from exc


def load_extra(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's extra tensors whose names start with ``prefix``."""
    try:
        return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    except (SafetensorError, OSError) as exc:
        raise SlidemapError(f"checkpoint {path} cannot be resumed ({exc}): train without "
                            "--resume") from exc


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    meta = _read_meta(path)
    saved, asked = meta["scheduler"].get("total_steps"), getattr(scheduler, "total_steps", None)
    if saved is not None and asked is not None and saved != asked:
        raise SlidemapError(f"checkpoint {path} is of a run of {saved} optimiser steps, the config "
                            f"asks for {asked} (training.epochs, windows_per_epoch, batch_size): "
                            "resume with the settings that wrote it, or train without --resume")
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    for index, extra in meta["optim_scalars"].items():
        slots.setdefault(int(index), {}).update(extra)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    return meta["state"]


def _read_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(META_KEY)
    if text is None:  # written before the settings moved into the metadata
        text = path.with_suffix(".json").read_text()
    return json.loads(text)
