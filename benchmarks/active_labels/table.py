"""The table of the labelling-loop benchmark (README.md here) from runs/active/*/finetune.json."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

OUT = Path("runs/active")


def main() -> None:
    rows = ["| boxes labelled | arm | seed | F1 before | F1 after | IoU after | precision | "
            "recall |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    means: dict[tuple[int, str], list[float]] = {}
    for k in (2, 4):
        for arm in ("suggested", "random"):
            for seed in (0, 1):
                path = OUT / f"{arm}_k{k}_s{seed}" / "finetune.json"
                if not path.exists():
                    continue
                report = json.loads(path.read_text())
                before, after = report["before"], report["after"]
                means.setdefault((k, arm), []).append(after["f1"])
                rows.append(f"| {k} | {arm} | {seed} | {before['f1']:.3f} | {after['f1']:.3f} | "
                            f"{after['iou']:.3f} | {after['precision']:.3f} | "
                            f"{after['recall']:.3f} |")
    rows += ["", "| boxes labelled | arm | mean F1 after (seeds) |", "| --- | --- | --- |"]
    rows += [f"| {k} | {arm} | {statistics.mean(f1s):.3f} ({len(f1s)}) |"
             for (k, arm), f1s in means.items()]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
