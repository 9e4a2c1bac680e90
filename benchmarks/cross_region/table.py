"""Markdown table of `slidemap evaluate` results: figures at the model's threshold and F1 over
a range of thresholds (from the probability histograms in each metrics.json).

    .venv/bin/python benchmarks/cross_region/table.py "B → A, seed 0=out/xr/BA_s0/metrics.json" ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7)


def row(label: str, path: Path) -> str:
    report = json.loads(path.read_text())
    m = report["metrics"]
    by_threshold = {round(t["threshold"], 3): t["f1"] for t in report["thresholds"]}
    best = max(report["thresholds"], key=lambda t: t["f1"])
    cells = [label] + [f"{m[k]:.3f}" for k in ("f1", "iou", "precision", "recall", "auc")]
    cells += [f"{by_threshold[t]:.3f}" for t in SWEEP]
    cells.append(f"{best['f1']:.3f} at {best['threshold']:.2f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.json")
    args = parser.parse_args()
    header = (["run", "F1", "IoU", "precision", "recall", "AUC"]
              + [f"F1 @ {t}" for t in SWEEP] + ["best F1 (threshold)"])
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for item in args.runs:
        label, _, path = item.rpartition("=")
        print(row(label, Path(path)))


if __name__ == "__main__":
    main()
