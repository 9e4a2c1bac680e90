"""The table of the labelling-loop benchmark (README.md here) from runs/active/*/finetune.json."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from rasterio.windows import from_bounds

OUT = Path("runs/active")
MASK = Path("../shared/data/jinsha/region_B_mask.tif")


def landslide_share(boxes: Path) -> float:
    """The share of landslide pixels among the labelled pixels of the boxes (region B's mask)."""
    _, _, wkb, _ = pyogrio.raw.read(boxes)
    counts = np.zeros(2)
    with rasterio.open(MASK) as ds:
        for box in shapely.from_wkb(wkb):
            labels = ds.read(1, window=from_bounds(*box.bounds, transform=ds.transform))
            counts += [(labels == 1).sum(), (labels != 255).sum()]
    return counts[0] / counts[1]


def main() -> None:
    # No arguments, but --help prints usage and a stray argument is refused.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    rows = ["| boxes labelled | arm | seed | landslide share in boxes | F1 before | F1 after | "
            "IoU after | precision | recall | AUC before | AUC after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    means: dict[tuple[int, str], list[float]] = {}
    aucs: dict[tuple[int, str], list[float]] = {}
    for k in (2, 4):
        for arm in ("suggested", "random", "loop"):
            for seed in (0, 1):
                path = OUT / f"{arm}_k{k}_s{seed}" / "finetune.json"
                if not path.exists():
                    continue
                report = json.loads(path.read_text())
                before, after = report["before"], report["after"]
                means.setdefault((k, arm), []).append(after["f1"])
                aucs.setdefault((k, arm), []).append(after["auc"])
                share = landslide_share(OUT / f"boxes_{arm}_k{k}_s{seed}.gpkg")
                rows.append(f"| {k} | {arm} | {seed} | {share:.3f} | {before['f1']:.3f} | "
                            f"{after['f1']:.3f} | "
                            f"{after['iou']:.3f} | {after['precision']:.3f} | "
                            f"{after['recall']:.3f} | {before['auc']:.3f} | "
                            f"{after['auc']:.3f} |")
    rows += ["", "| boxes labelled | arm | seeds | mean F1 after | mean AUC after |",
             "| --- | --- | --- | --- | --- |"]
    rows += [f"| {k} | {arm} | {len(f1s)} | {statistics.mean(f1s):.3f} | "
             f"{statistics.mean(aucs[(k, arm)]):.3f} |" for (k, arm), f1s in means.items()]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
