"""How the pseudo-labels of the protocol's adaptations drift (adapt.md, *What went wrong*): the
landslide share of each round's pseudo-labels, first and last round, over every seed and block,
and the time each adaptation took. Reads the per-block JSONs ``adapt.sh`` writes; no labels.

Usage (repository root, after benchmarks/protocol/adapt.sh):
  .venv/bin/python benchmarks/protocol/adapt_drift.py [out/protocol/terrain_vs_elevation/adapt]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(folder: Path) -> None:
    first, last, seconds = [], [], []
    for path in sorted(folder.glob("s*/*.json")):
        record = json.loads(path.read_text())
        rounds = record["adaptation"]["rounds"]
        first.append(rounds[0]["pseudo_landslide_fraction"])
        last.append(rounds[-1]["pseudo_landslide_fraction"])
        seconds.append(record["cost"]["seconds"])
    if not first:
        sys.exit(f"no adaptation records under {folder}: run benchmarks/protocol/adapt.sh first")
    grew = sum(b > a for a, b in zip(first, last, strict=True))
    print(f"{len(first)} adaptations: landslide share of the pseudo-labels "
          f"{statistics.mean(first):.2f} in the first round, {statistics.mean(last):.2f} in the "
          f"last; it grew in {grew} of {len(first)}")
    print(f"seconds per adaptation: mean {statistics.mean(seconds):.0f}, "
          f"{min(seconds):.0f}-{max(seconds):.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path("out/protocol/terrain_vs_elevation/adapt"),
                        help="adapt.sh's output folder (default: %(default)s)")
    main(parser.parse_args().folder)
