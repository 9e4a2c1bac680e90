"""The few-shot table from fewshot.py's results.csv: F1 (IoU) on the rest of each site per
number of tiles, draw and method, and the mean over draws where every method has several.

Usage (repository root): .venv/bin/python benchmarks/rgb_sites/table.py runs/rgb-fewshot
"""

import argparse
import csv
from pathlib import Path

METHODS = ["zero-shot", "scratch", "finetune", "finetune-slow-encoder", "finetune-low-lr",
           "finetune-frozen-first"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="fewshot.py's output folder (holds results.csv)")
    rows = list(csv.DictReader((parser.parse_args().runs / "results.csv").open()))
    cells = {(r["site"], int(r["k"]), int(r["draw"]), r["method"]): r for r in rows}
    methods = [m for m in METHODS if any(key[3] == m for key in cells)]
    print("| site | tiles | draw | " + " | ".join(methods) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |")
    for site, k in sorted({key[:2] for key in cells}):
        draws = sorted({key[2] for key in cells if key[:2] == (site, k)})
        for draw in draws:
            out = [f"{float(c['f1']):.3f} ({float(c['iou']):.3f})" if c else "–"
                   for c in (cells.get((site, k, draw, m)) for m in methods)]
            print(f"| {site} | {k} | {draw} | " + " | ".join(out) + " |")
        complete = [m for m in methods if all((site, k, d, m) in cells for d in draws)]
        if len(draws) > 1:
            out = []
            for method in methods:
                if method not in complete:
                    out.append("–")
                    continue
                f1 = [float(cells[(site, k, d, method)]["f1"]) for d in draws]
                out.append(f"**{sum(f1) / len(f1):.3f}**")
            print(f"| {site} | {k} | mean | " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
