"""Weight averaging over the end of a run (SWA, and SWAD's dense per-step variant).

Averaging the weights of many late optimiser steps lands in a flatter region of the loss than any
single step, which tends to transfer better to ground that looks different from the training
scenes. Averaged weights change every layer's activations, so BatchNorm statistics are estimated
again on training windows before the averaged network is used; those of a frozen encoder stay
as they were loaded, as its weights do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from slidemap.infer.runtime import autocast

PREFIX = "average."


class WeightAverage:
    """A running uniform mean of a model's parameters, one update per optimiser step."""

    def __init__(self, model: nn.Module) -> None:
        self.mean = {name: torch.zeros_like(p, dtype=torch.float32)
                     for name, p in model.named_parameters()}
        self.count = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            self.mean[name] += (p.detach().float() - self.mean[name]) / self.count

    def averaged(self, model: nn.Module, batches: Iterable[np.ndarray],
                 precision: str) -> nn.Module:
        """A copy of ``model`` with the averaged parameters and BatchNorm statistics estimated
        afresh on ``batches`` (normalised (B, C, H, W) training windows)."""
        if self.count == 0:
            raise ValueError("no weights were averaged")
        result = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in result.named_parameters():
                p.copy_(self.mean[name])
        tensors = (torch.from_numpy(x).to(memory_format=torch.channels_last) for x in batches)
        with autocast(precision):
            estimate_batch_norms(result, tensors)
        return result.eval()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The running mean as checkpoint tensors (the count travels in the run state)."""
        return {PREFIX + name: value.clone() for name, value in self.mean.items()}

    def restore(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        """Continue from checkpoint ``tensors`` holding ``count`` averaged steps."""
        for name in self.mean:
            self.mean[name] = tensors[PREFIX + name].float().clone()
        self.count = count


@torch.no_grad()
def estimate_batch_norms(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Estimate afresh the running statistics of the BatchNorms that train, from ``batches``
    (torch's ``update_bn`` without its reset of every BatchNorm: a frozen encoder stays in eval
    mode through ``model.train()``, so it would keep statistics reset to mean 0 and variance 1,
    not the pretrained ones its frozen weights were trained with)."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    if not norms:
        return
    momenta: dict[_BatchNorm, float | None] = {}
    for norm in norms:
        norm.reset_running_stats()
        momenta[norm] = norm.momentum
        norm.momentum = None  # a cumulative mean over every batch
    for x in batches:
        model(x)
    for norm, momentum in momenta.items():
        norm.momentum = momentum
