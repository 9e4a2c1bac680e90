"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A checkpoint holds model and optimiser tensors, the optimiser's and scheduler's plain settings, the
epoch reached and the best score so far. Batches are drawn from (seed, epoch), so this is all a
resumed run needs to end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slidemap.io.atomic import atomic_path


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """Write ``path`` (.safetensors) and ``path``.json atomically, sidecar last."""
    tensors = {f"model.{k}": v.detach().contiguous().clone()
               for k, v in model.state_dict().items()}
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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """Restore model, optimiser and scheduler in place; return the saved run state."""
    meta = json.loads(path.with_suffix(".json").read_text())
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
