"""Where a scene's prediction spends its time: CPU seconds per pipeline stage and thread.

Wraps the streaming engine's stages (read thread, model thread, blending thread, writer thread)
with per-thread CPU clocks, maps one scene with ``predict_scene`` and prints a table, with the
wall time the model's thread waits before the first band and after the last one (the parts no
other thread can hide). See speed.md; for example, on a 20000 × 4096 mosaic from ``mosaic.py``::

    export OMP_NUM_THREADS=1 M=/tmp/slidemap-mosaic/mosaic_20000x4096
    .venv/bin/python benchmarks/mosaic.py --size 20000 --height 4096 --configs bf16 \\
        --model models/slidemap-jinsha-unet.safetensors
    .venv/bin/python benchmarks/stages.py ${M}_image.vrt --dem ${M}_dsm.vrt \\
        --model models/slidemap-jinsha-unet.safetensors
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import slidemap.infer.stream as stream
import slidemap.io.rasters as rasters
from slidemap.data.scene import Scene
from slidemap.infer.ensemble import Predictor
from slidemap.infer.predict import PredictOptions, predict_scene
from slidemap.io.modelfile import load_model
from slidemap.schema.values import PRECISIONS

STAGES = [  # (module or class, function, label)
    (stream, "read_window", "read thread: windows read"),
    (Predictor, "__call__", "model thread: normalise + model"),
    (stream, "blend_band", "blend thread: to native px + blend"),
    (stream.Assembler, "_strip", "blend thread: sum bands"),
    (stream, "strip_weights", "writer thread: weights"),
    (Scene, "read_validity", "writer thread: native validity"),
    (rasters.RasterOutputs, "write", "writer thread: GeoTIFF writes"),
    (rasters, "verify_raster", "main thread: check outputs"),
    (rasters.RasterOutputs, "_finish", "main thread: COG copies (checks included)"),
]


def timed(function: Callable, label: str, cpu: dict[str, float],
          spans: list[tuple[float, float]] | None, lock: threading.Lock) -> Callable:
    """``function`` adding its thread's CPU seconds to ``cpu[label]`` (and its wall span to
    ``spans`` when given)."""
    def wrapper(*args: object, **kwargs: object) -> object:
        start, wall = time.thread_time(), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with lock:
                cpu[label] += time.thread_time() - start
                if spans is not None:
                    spans.append((wall, time.perf_counter()))
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--dem", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    args = parser.parse_args()
    cpu: dict[str, float] = collections.defaultdict(float)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    for owner, name, label in STAGES:
        model_stage = name == "__call__"
        setattr(owner, name, timed(getattr(owner, name), label, cpu,
                                   spans if model_stage else None, lock))
    predictor = Predictor([load_model(args.model)], precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        start, process = time.perf_counter(), time.process_time()
        predict_scene(predictor, args.image, args.dem, Path(tmp) / "prob.tif",
                      Path(tmp) / "mask.tif", PredictOptions(precision=args.precision))
        wall, total = time.perf_counter() - start, time.process_time() - process
    busy = sum(end - begin for begin, end in spans)
    print(f"wall {wall:.2f} s, process CPU {total:.2f} s, model thread busy {busy:.2f} s, "
          f"before the first band {spans[0][0] - start:.2f} s, after the last "
          f"{start + wall - spans[-1][1]:.2f} s\n")
    print("| stage | CPU s |\n| --- | ---: |")
    for _, _, label in STAGES:
        print(f"| {label} | {cpu[label]:.2f} |")


if __name__ == "__main__":
    main()
