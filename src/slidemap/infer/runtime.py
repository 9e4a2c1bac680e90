"""How a model runs on the CPU: bf16 autocast and channels_last, or plain fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from slidemap.schema.values import PRECISIONS


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the CPU (3-4× faster here than fp32), or nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Eval mode, channels_last memory layout (faster convolutions on the CPU)."""
    return model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


@torch.inference_mode()
def predict_batch(model: nn.Module, patches: np.ndarray, precision: str = "bf16") -> np.ndarray:
    """Landslide probabilities (B, H, W) float32 for a batch of normalised (B, C, H, W) patches."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(memory_format=torch.channels_last)
    with autocast(precision):
        logits = model(x)
    return torch.sigmoid(logits.float())[:, 0].numpy()
