"""CPU of writing a probability map as float32 or uint8: the streamed scratch GeoTIFF, then the
COG copy (speed.md). Reads a probability GeoTIFF (decoded, whichever type it stores) and writes
it both ways as ``predict`` does, strip by strip, into a temporary folder::

    .venv/bin/python benchmarks/prob_dtype.py out/mosaic/mosaic_6325x6325_image_prob.tif
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from slidemap.io.rasters import (
    BLOCK_SIDE,
    MASK_NODATA,
    cog_options,
    encode_probability,
    geotiff_profile,
    read_probability,
)


def cpu_seconds() -> float:
    """CPU of this process and its threads (the COG driver compresses on every core)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prob", type=Path)
    args = parser.parse_args()
    with rasterio.open(args.prob) as ds:
        profile = ds.profile
        prob = read_probability(ds, Window(0, 0, ds.width, ds.height))
    valid = np.isfinite(prob)
    print(f"{prob.shape[1]} × {prob.shape[0]} px\n")
    print("| type | scratch write CPU s | COG copy CPU s | COG copy wall s | COG bytes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "uint8"):
            nodata = float("nan") if dtype == "float32" else MASK_NODATA
            scratch, cog = Path(tmp) / f"{dtype}.tif", Path(tmp) / f"{dtype}_cog.tif"
            start = cpu_seconds()
            with rasterio.open(scratch, "w", **geotiff_profile(profile, dtype, nodata)) as out:
                for top in range(0, prob.shape[0], BLOCK_SIDE):
                    rows = slice(top, top + BLOCK_SIDE)
                    window = Window(0, top, prob.shape[1], prob[rows].shape[0])
                    out.write(encode_probability(prob[rows], valid[rows], dtype), 1,
                              window=window)
            written, wall = cpu_seconds(), time.perf_counter()
            rasterio.shutil.copy(scratch, cog, **cog_options(dtype, False))
            print(f"| {dtype} | {written - start:.2f} | {cpu_seconds() - written:.2f} | "
                  f"{time.perf_counter() - wall:.2f} | {cog.stat().st_size:,} |")


if __name__ == "__main__":
    main()
