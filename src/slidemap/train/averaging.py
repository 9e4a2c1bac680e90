"""Weight averaging over the end of a run (SWA, and SWAD's dense per-step variant).

Averaging the weights of many late optimiser steps lands in a flatter region of the loss than any
single step, which tends to transfer better to ground that looks different from the training
scenes. Averaged weights change every layer's activations, so BatchNorm statistics are estimated
again on training windows before the averaged network is used.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

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
            update_bn(tensors, result)
        return result.eval()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The running mean as checkpoint tensors (the count travels in the run state)."""
        return {PREFIX + name: value.clone() for name, value in self.mean.items()}

    def restore(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        """Continue from checkpoint ``tensors`` holding ``count`` averaged steps."""
        for name in self.mean:
            self.mean[name] = tensors[PREFIX + name].float().clone()
        self.count = count
