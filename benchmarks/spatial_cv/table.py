"""Markdown table of the spatial cross-validation: each scored half, and the halves pooled
(one confusion matrix over all their pixels) per fold and per model over both folds, at the
models' threshold and over a range of thresholds.

    .venv/bin/python benchmarks/spatial_cv/table.py "MODEL: FOLD, scored on HALF=PATH" ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SWEEP = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def counts(report: dict, threshold: float | None = None) -> tuple[float, float, float]:
    """(tp, fp, fn) at the report's threshold, or at ``threshold`` from its sweep (recall and
    precision there give tp and fp, as the labelled pixels are the same at every threshold)."""
    m = report["metrics"]
    if threshold is None:
        return m["tp"], m["fp"], m["fn"]
    row = next(t for t in report["thresholds"] if abs(t["threshold"] - threshold) < 1e-9)
    positives = m["tp"] + m["fn"]
    tp = row["recall"] * positives
    fp = tp / row["precision"] - tp if row["precision"] > 0 else 0.0
    return tp, fp, positives - tp


def figures(tp: float, fp: float, fn: float) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"f1": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": precision, "recall": recall}


def pooled(reports: list[dict], threshold: float | None = None) -> dict[str, float]:
    totals = [sum(c) for c in zip(*(counts(r, threshold) for r in reports), strict=True)]
    return figures(*totals)


def row(label: str, reports: list[dict]) -> str:
    at_model = pooled(reports)
    cells = [label] + [f"{at_model[k]:.3f}" for k in ("f1", "iou", "precision", "recall")]
    cells += [f"{pooled(reports, t)['f1']:.3f}" for t in SWEEP]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.json, the label as "
                        "'MODEL: FOLD, scored on HALF'")
    args = parser.parse_args()
    labelled = [(label, json.loads(Path(path).read_text()))
                for label, _, path in (item.rpartition("=") for item in args.runs)]
    header = ["scored", "F1", "IoU", "precision", "recall"] + [f"F1 @ {t}" for t in SWEEP]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    folds: dict[str, list[dict]] = {}
    models: dict[str, list[dict]] = {}
    for label, report in labelled:
        print(row(label, [report]))
        folds.setdefault(label.split(", scored")[0], []).append(report)
        models.setdefault(label.split(":")[0], []).append(report)
    for fold, reports in folds.items():
        print(row(f"**{fold}, pooled**", reports))
    for model, reports in models.items():
        print(row(f"**{model}: all scored halves, pooled**", reports))


if __name__ == "__main__":
    main()
