"""CPU seconds of one window's steps: read (with terrain descriptors), normalise, the model at
each of its scales, the resampling between them; for each model file given.

What a window costs on the model's thread and beside it (``scale.md``), on one thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/window_costs.py \\
        models/slidemap-jinsha-fusion.safetensors models/slidemap-jinsha-unet.safetensors
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from rasterio.windows import Window

from slidemap.data.channels import read_inputs, stack_channels
from slidemap.data.normalization import normalise
from slidemap.data.scaling import demote
from slidemap.data.scene import Scene
from slidemap.infer.ensemble import Predictor
from slidemap.io.modelfile import load_model

JINSHA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jinsha"


def cpu(step: Callable[[], object], repeats: int = 3) -> float:
    """Mean CPU seconds of ``step`` on this thread, after one call to warm up."""
    step()
    started = time.thread_time()
    for _ in range(repeats):
        step()
    return (time.thread_time() - started) / repeats


def row(path: Path) -> str:
    """The table row of one model file, on a window of its own size from Jinsha region B."""
    bundle = load_model(path)
    predictor = Predictor([bundle])
    backend, stats = predictor.members[0]
    spec = bundle.inputs
    with Scene(JINSHA / "region_B_image.tif", dem=JINSHA / "region_B_dsm.tif") as scene:
        factor = scene.decimation(spec.resolution_m)
        side = bundle.predict.tile * factor
        window = Window(0, 0, min(side, scene.width), min(side, scene.height))
        sample = read_inputs(scene, window, spec, factor)
        read_s = cpu(lambda: stack_channels(read_inputs(scene, window, spec, factor), spec))
    raw = stack_channels(sample, spec)
    norm_s = cpu(lambda: normalise(raw, stats, valid=sample["valid"]))
    x = normalise(raw, stats, valid=sample["valid"])[None]
    h, w = x.shape[-2:]
    model_s, resample_s = [], 0.0
    for scale in predictor.scales:
        size = (round(h * scale), round(w * scale))
        shrunk = x if scale == 1.0 else demote(x, size)
        model_s.append(f"{scale:g}: {cpu(lambda s=shrunk: backend(s)):.3f}")
        if scale != 1.0:
            prob = backend(shrunk)
            resample_s += (cpu(lambda s=size: demote(x, s))
                           + cpu(lambda p=prob: demote(p, (h, w))))
    return (f"| {path.name} | {side} | {read_s:.3f} | {norm_s:.3f} | {', '.join(model_s)} "
            f"| {resample_s:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    print("| model | window (native px) | read s | normalise s | model s per scale "
          "| resampling s |\n| --- | ---: | ---: | ---: | --- | ---: |")
    for path in args.models:
        print(row(path))


if __name__ == "__main__":
    main()
