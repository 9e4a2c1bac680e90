"""Inputs of the labelling-loop benchmark, written under runs/active/.

- ``B_slides.gpkg``: region B's landslides as polygons, reprojected to WGS 84 (the analyst's
  labels, in another CRS than the image: the vector path is what is measured);
- ``B_south.gpkg``: the southern half of region B, the held-out test area (never labelled), and
  ``B_north.gpkg`` the northern half (for the README's ``slidemap newsite`` example);
- ``boxes_{suggested,random}_k{K}_s{S}.gpkg``: the k boxes "labelled" in each arm: the top k of
  ``slidemap suggest`` (the same for every seed), or k drawn (seeded) from all its candidates;
- ``boxes_loop_k4_s{S}.gpkg``: two rounds of the loop: the top 2 of the start model, then the top
  2 of the model fine-tuned on them (``round2_s{S}.gpkg``, suggested with the first two skipped).

Usage: python benchmarks/active_labels/prepare.py polygons | boxes K SEED | loop SEED
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.warp import transform as warp_transform

DATA = Path("../shared/data/jinsha")
OUT = Path("runs/active")


def write(path: Path, geometries: list, crs: str) -> None:
    wkb = np.array([shapely.to_wkb(g) for g in geometries], dtype=object)
    pyogrio.raw.write(path, wkb, [np.arange(len(wkb))], ["id"], driver="GPKG",
                      geometry_type="Polygon", crs=crs)


def to_wgs84(crs: str):
    def run(xy: np.ndarray) -> np.ndarray:
        xs, ys = warp_transform(crs, "EPSG:4326", xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])
    return run


def polygons() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with rasterio.open(DATA / "region_B_mask.tif") as ds:
        slide = ds.read(1) == 1
        crs, bounds = ds.crs.to_string(), ds.bounds
        found = [shapely.geometry.shape(g) for g, _ in
                 shapes(slide.astype(np.uint8), mask=slide, transform=ds.transform)]
    write(OUT / "B_slides.gpkg", [shapely.transform(shapely.segmentize(g, 2.0), to_wgs84(crs))
                                  for g in found], "EPSG:4326")
    middle = (bounds.bottom + bounds.top) / 2
    write(OUT / "B_south.gpkg", [shapely.box(bounds.left, bounds.bottom, bounds.right, middle)],
          crs)
    write(OUT / "B_north.gpkg", [shapely.box(bounds.left, middle, bounds.right, bounds.top)],
          crs)


def boxes(k: int, seed: int) -> None:
    meta, _, wkb, _ = pyogrio.raw.read(OUT / "suggested.gpkg")
    write(OUT / f"boxes_suggested_k{k}_s{seed}.gpkg", list(shapely.from_wkb(wkb[:k])),
          meta["crs"])
    meta, _, wkb, _ = pyogrio.raw.read(OUT / "candidates.gpkg")
    drawn = np.random.default_rng(seed).choice(len(wkb), k, replace=False)
    write(OUT / f"boxes_random_k{k}_s{seed}.gpkg", list(shapely.from_wkb(wkb[drawn])),
          meta["crs"])


def loop(seed: int) -> None:
    meta, _, first, _ = pyogrio.raw.read(OUT / f"boxes_suggested_k2_s{seed}.gpkg")
    _, _, second, _ = pyogrio.raw.read(OUT / f"round2_s{seed}.gpkg")
    write(OUT / f"boxes_loop_k4_s{seed}.gpkg", list(shapely.from_wkb([*first, *second])),
          meta["crs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("polygons", help="region B's landslides and its two halves")
    box = steps.add_parser("boxes", help="the K boxes of each arm for SEED")
    box.add_argument("k", type=int)
    box.add_argument("seed", type=int)
    steps.add_parser("loop", help="the two rounds of the loop for SEED").add_argument(
        "seed", type=int)
    args = parser.parse_args()
    if args.step == "polygons":
        polygons()
    elif args.step == "loop":
        loop(args.seed)
    else:
        boxes(args.k, args.seed)


if __name__ == "__main__":
    main()
