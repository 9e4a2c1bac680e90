"""Peak memory of ``slidemap predict`` against scene size, on a synthetic scene (see scale.md).

Writes a SIZE × SIZE (or SIZE wide × HEIGHT tall) RGB + DSM scene (tiled, deflate, 0.5 m, a
nodata strip on the left) and an untrained width-4 U-Net into --out, then maps the scene with
``slidemap.api.predict`` (rasters and inventory) in a fresh process and prints its wall time and
peak RSS (VmHWM). The model is tiny on purpose: memory, not the network, is measured, and working
at native resolution (no decimation) makes the pipeline handle the most windows::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --size 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from slidemap.data.channels import InputSpec
from slidemap.io.modelfile import ModelBundle, save_model
from slidemap.models import build_model

CHILD = """
import json, sys, time
from pathlib import Path
from slidemap import api
from slidemap.infer.predict import PredictOptions
folder, resolution = Path(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
result = api.predict(folder / "scene.tif", folder / "out", folder / "scene_dsm.tif",
                     folder / f"tiny-{resolution}.safetensors", PredictOptions(), overwrite=True)
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak),
                  "windows": result.windows, "landslides": result.landslides}))
"""


def write_scene(folder: Path, size: int, height: int) -> None:
    grid = {"driver": "GTiff", "width": size, "height": height, "crs": "EPSG:32647",
            "transform": from_origin(469200.0, 3446200.0, 0.5, 0.5), "tiled": True,
            "blockxsize": 256, "blockysize": 256, "compress": "deflate", "zlevel": 1}
    rng = np.random.default_rng(0)
    with rasterio.open(folder / "scene.tif", "w", count=3, dtype="uint8", nodata=0,
                       **grid) as image, \
            rasterio.open(folder / "scene_dsm.tif", "w", count=1, dtype="float32",
                          nodata=float("nan"), **grid) as dsm:
        for top in range(0, height, 1024):
            rows = min(1024, height - top)
            y, x = np.mgrid[top:top + rows, 0:size].astype(np.float32)
            blobs = np.sin(y / 300) * np.cos(x / 250) > 0.6
            pixels = rng.integers(40, 90, size=(3, rows, size), dtype=np.uint8)
            pixels[:, blobs] += 100
            pixels[:, :, :64] = 0
            image.write(pixels, window=Window(0, top, size, rows))
            z = 3000 + 0.25 * x + 0.1 * y + 20 * np.sin(y / 50)
            z[:, :64] = np.nan
            dsm.write(z[None], window=Window(0, top, size, rows))


def write_model(folder: Path, resolution: float | None) -> None:
    torch.manual_seed(0)
    bundle = ModelBundle(build_model("unet", 4, width=4, depth=2), "unet", 4, {"depth": 2},
                         InputSpec(slope=True, resolution_m=resolution),
                         [60.0, 60.0, 60.0, 10.0], [30.0, 30.0, 30.0, 5.0])
    save_model(bundle, folder / f"tiny-{resolution or 'native'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="width (and height) in px")
    parser.add_argument("--height", type=int, default=None, help="height if not --size")
    parser.add_argument("--resolution", type=float, default=None,
                        help="the model's working resolution in m (default: native 0.5 m)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/slidemap-scale"))
    args = parser.parse_args()
    height = args.height or args.size
    folder = args.out / f"{args.size}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "scene_dsm.tif").exists():
        write_scene(folder, args.size, height)
    write_model(folder, args.resolution)
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder),
                           str(args.resolution or "native")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    print(json.dumps({"width": args.size, "height": height, "resolution_m": args.resolution,
                      **json.loads(done.stdout)}))


if __name__ == "__main__":
    main()
