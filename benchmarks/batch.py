"""Windows per model call: CPU seconds per window and peak memory of the model (see speed.md).

Reads the windows with data of a Jinsha scene at the model's own window size and resolution
(the model file's defaults; the first 8, repeated if the scene has fewer), then, in a fresh
process per batch size, runs the predictor (every member and scale, as ``predict`` does) on them
in batches and prints the CPU seconds per window (which hold on a shared CPU, where wall seconds
stretch) and how far the process's peak RSS rose above the loaded model::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch.py --sizes 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from slidemap.api import DEFAULT_MODEL  # the shipped default, whichever it is

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO.parent / "shared" / "data" / "jinsha" / "region_B_image.tif"
DEM = SCENE.with_name("region_B_dsm.tif")


def peak_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM")) / 1024


def measure(model: Path, size: int, rounds: int, image: Path = SCENE, dem: Path = DEM) -> dict:
    from slidemap.data.channels import read_inputs, stack_channels
    from slidemap.data.scene import Scene
    from slidemap.infer.predict import PredictOptions, build_predictor
    from slidemap.infer.stream import Grid

    predictor = build_predictor([model], PredictOptions())
    options = PredictOptions().resolve(predictor.defaults)  # the model file's window and overlap
    with Scene(image, dem=dem) as scene:
        factor = scene.decimation(predictor.spec.resolution_m)
        grid = Grid.of(scene.height, scene.width, options.tile, options.overlap, factor)
        raw, valid = [], []
        for window in (w for row in grid.rows for w in grid.band_windows(row)):
            sample = read_inputs(scene, window, predictor.spec, factor)
            if sample["valid"].any():
                raw.append(stack_channels(sample, predictor.spec))
                valid.append(sample["valid"])
    raw, valid = (raw * 8)[:8], (valid * 8)[:8]
    loaded = peak_mb()
    predictor(raw[:size], valid[:size])  # warm-up
    cpu, windows = time.process_time(), 0
    for _ in range(rounds):
        for start in range(0, len(raw), size):
            predictor(raw[start:start + size], valid[start:start + size])
            windows += len(raw[start:start + size])
    return {"batch": size, "windows": windows, "tile": options.tile,
            "cpu_s_per_window": round((time.process_time() - cpu) / windows, 3),
            "peak_above_loaded_mb": round(peak_mb() - loaded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.rounds)))
        return
    print(f"load before: {os.getloadavg()[0]:.1f}")
    for size in map(int, args.sizes.split(",")):
        done = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--rounds",
                               str(args.rounds), "--one", str(size)], capture_output=True,
                              text=True, check=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
