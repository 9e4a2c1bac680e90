"""Two RGB recipes' leave-one-site-out F1, seed by seed, and the pre-registered rule's decision
(README.md, "Third recipe"): the candidate replaces the baseline only if its F1, averaged over the
seeds, beats the baseline's on the mean over the sites and on at least 3 of the 4 sites.

Reads runs/rgb-loso-RECIPE-sSEED/SITE/heldout.json, written by loso.sh (score_loso.py); a
recipe named RECIPE:TAG reads heldout-TAG.json instead (the same models predicted otherwise, e.g.
base:scales-1-0.5 from score_loso.py --scales 1 0.5).

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/compare.py base colour_random --seeds 0 1
"""

import argparse
import json
from pathlib import Path

from make_configs import SITES

RUNS = Path("runs")


def f1(recipe: str, seed: int, site: str) -> float:
    recipe, _, tag = recipe.partition(":")
    name = f"heldout-{tag}.json" if tag else "heldout.json"
    path = RUNS / f"rgb-loso-{recipe}-s{seed}" / site / name
    return float(json.loads(path.read_text())["f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    recipes = [args.baseline, args.candidate]
    seeds = "/".join(str(s) for s in args.seeds)
    print(f"| site held out | {args.baseline} F1, seeds {seeds} | mean | "
          f"{args.candidate} F1, seeds {seeds} | mean | candidate − baseline |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    means: dict[str, list[float]] = {r: [] for r in recipes}
    wins = 0
    for site in SITES:
        cells = []
        for recipe in recipes:
            scores = [f1(recipe, seed, site) for seed in args.seeds]
            means[recipe].append(sum(scores) / len(scores))
            cells += [" / ".join(f"{s:.3f}" for s in scores), f"{means[recipe][-1]:.3f}"]
        gain = means[args.candidate][-1] - means[args.baseline][-1]
        wins += gain > 0
        print(f"| {site} | " + " | ".join(cells) + f" | {gain:+.3f} |")
    overall = {r: sum(v) / len(v) for r, v in means.items()}
    gain = overall[args.candidate] - overall[args.baseline]
    print(f"| **mean** | | **{overall[args.baseline]:.3f}** | | **{overall[args.candidate]:.3f}**"
          f" | **{gain:+.3f}** |")
    adopt = gain > 0 and wins >= 3
    print(f"\n{args.candidate} beats {args.baseline} on {wins} of {len(SITES)} sites and by "
          f"{gain:+.3f} on the mean: "
          + ("adopt the candidate." if adopt else "keep the baseline."))


if __name__ == "__main__":
    main()
