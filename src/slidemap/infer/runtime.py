"""How a model runs on the CPU: bf16 autocast and channels_last, or plain fp32.

bf16 pays only where the CPU computes in it (AVX-512 BF16 or AMX): there it is 3-4× faster than
fp32; on a CPU without them (AVX2 only, as many AMD EPYC and older Intel ones) it is emulated and
about 11× slower (``benchmarks/speed.md``). ``auto``, the default, picks by the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from slidemap.schema.values import PRECISIONS


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 itself (AVX-512 BF16 or AMX), so bf16 is fast. torch
    says so only through private functions: a torch without them gets fp32, the safe side."""
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if callable(check))


def resolve_precision(precision: str) -> str:
    """``bf16`` or ``fp32``: ``auto`` is bf16 where the CPU computes in it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's threads set to ``threads`` (None: as they are) in the block and set back after
    it: the count is process-wide, and an API caller's own work after a run keeps its own."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def kept_torch_rng() -> Iterator[None]:
    """torch's global random generator given back as it was after the block (a decorator
    too): training seeds it and building a network draws from it, and an API caller who
    seeded torch draws the same numbers after a run as before it."""
    state = torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the CPU, or nothing for ``fp32`` (``auto``: by the CPU)."""
    if resolve_precision(precision) == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Eval mode, channels_last memory layout (faster convolutions on the CPU)."""
    return model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


@torch.inference_mode()
def predict_batch(model: nn.Module, patches: np.ndarray, precision: str = "auto") -> np.ndarray:
    """Landslide probabilities (B, H, W) float32 for a batch of normalised (B, C, H, W) patches."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(memory_format=torch.channels_last)
    with autocast(precision):
        logits = model(x)
    return torch.sigmoid(logits.float())[:, 0].numpy()
