"""Seconds per 512 px window of a model in each precision and backend, and per training step
(batch 8 of 256 px, forward and backward) in each precision, on this CPU (speed.md).

Tells whether bf16 pays here: where the CPU computes in bf16 (AVX-512 BF16 or AMX) it is several
times faster than fp32; where it is emulated (AVX2 only) it is many times slower, which is why
``--precision auto`` (the default) picks by the CPU::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/precision.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from slidemap.api import DEFAULT_MODEL
from slidemap.infer.backends import make_backend
from slidemap.infer.runtime import autocast, native_bf16, resolve_precision
from slidemap.io.modelfile import load_model

CONFIGS = [("fp32", "torch", "fp32"), ("bf16", "torch", "bf16"), ("onnx", "onnx", "fp32")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bundle = load_model(args.model)
    batch = np.random.default_rng(0).normal(
        size=(1, len(bundle.inputs.channels), args.tile, args.tile)).astype(np.float32)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {native_bf16()}, auto -> {resolve_precision('auto')}, "
          f"threads {torch.get_num_threads()}\n")
    print("| config | s per window |\n| --- | ---: |")
    for name, where, precision in CONFIGS:
        backend = make_backend(bundle, where, precision)
        backend(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(args.repeats):
            backend(batch)
        print(f"| {name} | {(time.perf_counter() - started) / args.repeats:.3f} |")
    print("\n| training step (batch 8 of 256 px) | s per step |\n| --- | ---: |")
    model = bundle.model.train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(8, len(bundle.inputs.channels), 256, 256).to(
        memory_format=torch.channels_last)
    target = (torch.rand(8, 1, 256, 256) > 0.9).float()
    for precision in ("fp32", "bf16"):
        for step in range(args.repeats + 1):
            if step == 1:  # the first step warms up
                started = time.perf_counter()
            optimizer.zero_grad()
            with autocast(precision):
                logits = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
            loss.backward()
            optimizer.step()
        print(f"| {precision} | {(time.perf_counter() - started) / args.repeats:.3f} |")


if __name__ == "__main__":
    main()
