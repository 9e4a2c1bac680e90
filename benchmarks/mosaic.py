"""Throughput and memory on a large mosaic built from the Jinsha scenes (see speed.md, scale.md).

Builds two VRTs in --out (no pixel is copied): region A and B images tiled side by side, and their
DSMs the same way, SIZE × SIZE (or SIZE × HEIGHT) pixels at 0.5 m, about 60 % nodata like the
scenes, so landslides are as dense as in a real scene. Then runs ``slidemap bench`` once per
configuration, each in its own process under ``/usr/bin/time -v`` so that each peak RSS is its
own, and prints a Markdown table with the machine's load before and after each run. Window size,
overlap, scales and threshold are the model file's own (``slidemap bench`` reads them from it and
the table repeats them), so the figures follow the shipped defaults when they change. The shipped
default model at 40 and 400 Mpx, and the RGB-only model that ``predict`` runs without ``--dem``
(``--no-dem``: the image alone)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/mosaic.py --size 6325 --configs auto
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/mosaic.py --size 20000 --configs auto
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/mosaic.py --size 20000 --no-dem \
        --model models/slidemap-rgb-sites.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio

from slidemap.api import DEFAULT_MODEL  # the shipped default, whichever it is

REPO = Path(__file__).resolve().parents[1]
JINSHA = REPO.parent / "shared" / "data" / "jinsha"
CONFIGS = {
    "auto": ["--precision", "auto"],  # the shipped default: bf16 where the CPU computes in it
    "bf16": ["--precision", "bf16"],
    "fp32": ["--precision", "fp32"],
    "onnx": ["--backend", "onnx"],
    "bf16-compiled": ["--precision", "bf16", "--compile"],
}


def build_vrt(kind: str, size: int, height: int, out: Path) -> Path:
    """A SIZE wide × HEIGHT tall VRT of the region A and B rasters of ``kind`` (image or dsm),
    alternating on a grid of cells as large as the larger scene; what no scene covers is
    nodata."""
    sources = [JINSHA / f"region_{r}_{kind}.tif" for r in ("A", "B")]
    with rasterio.open(sources[1]) as ds:
        cell_h, cell_w = ds.height, ds.width
        crs, transform, count = ds.crs, ds.transform, ds.count
        dtype, nodata = ds.dtypes[0], ds.nodata
    vrt_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    placed = []
    for row, top in enumerate(range(0, height, cell_h)):
        for col, left in enumerate(range(0, size, cell_w)):
            source = sources[(row + col) % 2]
            with rasterio.open(source) as ds:
                placed.append((source, left, top, min(ds.width, size - left),
                               min(ds.height, height - top)))
    bands = []
    for band in range(1, count + 1):
        items = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(src))}'
            f"</SourceFilename><SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for src, x, y, w, h in placed)
        bands.append(f'<VRTRasterBand dataType="{vrt_type}" band="{band}">'
                     f"<NoDataValue>{nodata}</NoDataValue>{items}</VRTRasterBand>")
    geo = ", ".join(str(v) for v in (transform.c, transform.a, 0.0, transform.f, 0.0,
                                     transform.e))
    path = out / f"mosaic_{size}x{height}_{kind}.vrt"
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{height}">'
                    f"<SRS>{escape(crs.to_wkt())}</SRS><GeoTransform>{geo}</GeoTransform>"
                    f"{''.join(bands)}</VRTDataset>\n")
    return path


def run(image: Path, dem: Path | None, model: Path, config: str, sample: int, out: Path) -> dict:
    """``slidemap bench`` in a process of its own, under ``/usr/bin/time -v`` for its peak RSS,
    with the machine's load averages before and after (the CPU may be shared)."""
    result = out / f"bench_{config}.json"
    command = [sys.executable, "-m", "slidemap", "bench", str(image),
               *(["--dem", str(dem)] if dem is not None else []),
               "--model", str(model), "--sample", str(sample), "--json", str(result),
               "--overwrite", *CONFIGS[config]]  # this run's own figures replace the last ones
    timed = ["/usr/bin/time", "-v", *command] if Path("/usr/bin/time").exists() else command
    print("$", " ".join(command), file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    done = subprocess.run(timed, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "OMP_NUM_THREADS":
                                          os.environ.get("OMP_NUM_THREADS", "1")})
    figures = json.loads(result.read_text())
    figures["load_before"], figures["load_after"] = load_before, os.getloadavg()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    figures["time_v_max_rss_mb"] = round(int(match[1]) / 1024) if match else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="mosaic width (and height)")
    parser.add_argument("--height", type=int, help="mosaic height if not --size: memory "
                        "depends on the width, so a short wide mosaic checks the peak RSS")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="model file (default: the shipped default model)")
    parser.add_argument("--configs", default="auto", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--no-dem", action="store_true",
                        help="map the image alone, as predict does without --dem")
    parser.add_argument("--sample", type=int, default=32, help="windows timed model-only")
    parser.add_argument("--out", type=Path, default=Path("/tmp/slidemap-mosaic"))
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    height = args.height or args.size
    image, dem = (build_vrt(kind, args.size, height, args.out) for kind in ("image", "dsm"))
    results = [run(image, None if args.no_dem else dem, args.model, config, args.sample, args.out)
               for config in args.configs.split(",")]
    print(f"\n{args.size} × {height} px ({args.size * height / 1e6:.0f} Mpx), model {args.model}"
          f"{', the image alone (no DEM)' if args.no_dem else ''}\n")
    first = results[0]
    print(f"model defaults read from the model file: tile {first['tile']}, overlap "
          f"{first['overlap']}, scales {first['scales']}, threshold {first['threshold']}; memory "
          f"budget {first['memory_mb']} MB\n")
    print("| config | windows | column blocks | model-only Mpx/s | end-to-end Mpx/s | share "
          "| end-to-end s | inventory s | model CPU s | model thread CPU s | end-to-end CPU s "
          "| peak RSS MB "
          "(time -v) | load (1 min) before / after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for config, r in zip(args.configs.split(","), results, strict=True):
        print(f"| {config} | {r['windows']} | {r['column_blocks']} | {r['model_only_mpx_s']} "
              f"| {r['end_to_end_mpx_s']} | {r['end_to_end_share']:.0%} | {r['end_to_end_s']} "
              f"| {r['inventory_s']} | {r['model_cpu_s']} | {r['model_thread_cpu_s']} "
              f"| {r['end_to_end_cpu_s']} "
              f"| {r['time_v_max_rss_mb']} | {r['load_before'][0]:.1f} / "
              f"{r['load_after'][0]:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
