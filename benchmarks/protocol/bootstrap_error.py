"""How much a written bootstrap interval's lower end owes to the generator's seed.

crossval draws 2000 resamples of the blocks from numpy's ``default_rng(0)``. This script reads
comparisons' ``*_blocks.csv`` files (the counts are rebuilt from each row's pixels, landslide
share, precision and recall), gives the lower end its ``.md`` beside it wrote (made by the code
of its day, whose draws may differ), recomputes it with today's code and seeds 0-199, and gives
the exact 2.5 % quantile over every multiset of the blocks (k^k equally likely draws, grouped),
which no seed moves. Usage (bootstrap_error.md): ``python benchmarks/protocol/bootstrap_error.py
benchmarks/protocol/*_blocks.csv benchmarks/protocol/shipped/*_blocks.csv``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from slidemap.train.crossval import compare

SEEDS = 200
DRAWS = 2000


def block_counts(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(candidate, baseline) counts (seeds, blocks, tp/fp/fn/tn) and the block names."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = list(dict.fromkeys(row["block"] for row in rows))
    seeds = sorted({int(row["seed"]) for row in rows})
    tables = {label: np.zeros((len(seeds), len(names), 4), np.int64)
              for label in ("candidate", "baseline")}
    for row in rows:
        pixels = int(row["pixels"])
        positives = round(pixels * float(row["landslide"]))
        tp = round(float(row["recall"]) * positives)
        precision = float(row["precision"])
        fp = round(tp / precision - tp) if precision else 0
        tables[row["recipe"]][seeds.index(int(row["seed"])), names.index(row["block"])] = \
            [tp, fp, positives - tp, pixels - positives - fp]
    return tables["candidate"], tables["baseline"], names


def f1(counts: np.ndarray) -> np.ndarray:
    return 2 * counts[..., 0] / np.maximum(2 * counts[..., 0] + counts[..., 1] + counts[..., 2], 1)


def lower_ends(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The interval's lower end under each of ``SEEDS`` generator seeds."""
    k = candidate.shape[1]
    per_block = candidate.sum(0), baseline.sum(0)
    ends = []
    for seed in range(SEEDS):
        picks = np.random.default_rng(seed).integers(0, k, size=(DRAWS, k))
        ends.append(np.percentile(f1(per_block[0][picks].sum(1)) - f1(per_block[1][picks].sum(1)),
                                  2.5))
    return np.array(ends)


def exact_lower_end(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """The 2.5 % quantile of the difference over every multiset of k blocks, each weighted by
    how many of the k^k ordered draws give it."""
    k = candidate.shape[1]
    per_block = candidate.sum(0), baseline.sum(0)
    values, weights = [], []
    for combo in itertools.combinations_with_replacement(range(k), k):
        weight = math.factorial(k)
        for count in Counter(combo).values():
            weight //= math.factorial(count)
        picks = list(combo)
        values.append(float(f1(per_block[0][picks].sum(0)) - f1(per_block[1][picks].sum(0))))
        weights.append(weight / k**k)
    order = np.argsort(values)
    cumulative = np.cumsum(np.array(weights)[order])
    return float(np.array(values)[order][np.searchsorted(cumulative, 0.025)])


def written_lower_end(path: str) -> str:
    """The lower end the comparison's summary (its ``.md`` beside the table) gives, as text."""
    stem = path.removesuffix("_blocks.csv")
    summary = Path(stem + (".md" if Path(stem + ".md").is_file() else "_summary.md"))
    found = re.search(r"interval over blocks \[([-+][0-9.]+),", summary.read_text()) \
        if summary.is_file() else None
    return found.group(1) if found else "–"


def main(paths: list[str]) -> None:
    print("| comparison | in its .md | today, seed 0 | seeds 0-199 | above 0 | exact |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for path in paths:
        candidate, baseline, names = block_counts(path)
        today = compare(candidate, baseline, names)["interval_95"][0]
        ends = lower_ends(candidate, baseline)
        print(f"| {path.rsplit('/', 1)[-1]} | {written_lower_end(path)} | {today:+.4f} | "
              f"{ends.min():+.4f} to {ends.max():+.4f} | {(ends > 0).mean():.0%} | "
              f"{exact_lower_end(candidate, baseline):+.4f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", help="crossval comparisons' *_blocks.csv files")
    main(parser.parse_args().tables)
