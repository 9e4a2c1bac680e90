"""Cut each Jinsha region into a west and an east half, with a buffer strip between them.

The spatial cross-validation (run.sh) trains on one half of both regions and scores the other
half, so the model learns from both regions, as the shipped one does, and is still scored on
ground it never saw. The buffer keeps the two halves from sharing landslides cut by the line.

    python benchmarks/spatial_cv/crop.py DATA_DIR OUT_DIR [--buffer-m 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import rasterio
from rasterio.windows import Window

LAYERS = ("image", "dsm", "mask")


def half_windows(width: int, height: int, buffer_px: int) -> dict[str, Window]:
    """West and east windows of a raster, ``buffer_px`` apart about the middle column."""
    west_end = (width - buffer_px) // 2
    east_start = west_end + buffer_px
    return {"west": Window(0, 0, west_end, height),
            "east": Window(east_start, 0, width - east_start, height)}


def write_crop(source: Path, window: Window, target: Path) -> None:
    """Copy ``window`` of ``source`` to ``target``, georeferenced, with the source's profile."""
    with rasterio.open(source) as src:
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        data = src.read(window=window)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with region_{A,B}_{image,dsm,mask}.tif")
    parser.add_argument("out", type=Path, help="folder for the halves")
    parser.add_argument("--buffer-m", type=float, default=64.0,
                        help="strip left out between halves")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for region in "AB":
        with rasterio.open(args.data / f"region_{region}_mask.tif") as src:
            width, height, pixel = src.width, src.height, src.res[0]
        windows = half_windows(width, height, round(args.buffer_m / pixel))
        for half, window in windows.items():
            for layer in LAYERS:
                target = args.out / f"region_{region}_{half}_{layer}.tif"
                if not target.exists():
                    write_crop(args.data / f"region_{region}_{layer}.tif", window, target)


if __name__ == "__main__":
    main()
