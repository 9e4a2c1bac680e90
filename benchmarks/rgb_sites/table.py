"""The few-shot table from fewshot.py's results.csv: F1 (IoU) on the rest of each site per
number of tiles and method; with several draws, their mean and each draw's F1.

Usage (repository root): .venv/bin/python benchmarks/rgb_sites/table.py runs/rgb-fewshot
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ["zero-shot", "scratch", "finetune", "finetune-slow-encoder"]


def main() -> None:
    rows = list(csv.DictReader((Path(sys.argv[1]) / "results.csv").open()))
    cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for row in rows:  # a rerun's row replaces the earlier one
        cells[(row["site"], int(row["k"]), row["method"])][int(row["draw"])] = row
    methods = [m for m in METHODS if any(key[2] == m for key in cells)]
    print("| site | tiles | " + " | ".join(methods) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
    for site, k in sorted({key[:2] for key in cells}):
        out = []
        for method in methods:
            draws = cells.get((site, k, method), {})
            if not draws:
                out.append("–")
                continue
            f1 = [float(r["f1"]) for _, r in sorted(draws.items())]
            iou = [float(r["iou"]) for _, r in sorted(draws.items())]
            text = f"{sum(f1) / len(f1):.3f} ({sum(iou) / len(iou):.3f})"
            if len(f1) > 1:
                text += " [" + ", ".join(f"{v:.3f}" for v in f1) + "]"
            out.append(text)
        print(f"| {site} | {k} | " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
