"""Few-shot curve on a held-out site: k of its tiles either fine-tune the leave-one-site-out
model that never saw the site, or train the same network from scratch; both are scored on the
site's other tiles (one confusion matrix), as is the starting model with no tile at all.

Runs go to OUT/SITE-kK-dD-METHOD/ (an existing model is reused, so an interrupted sweep
continues); every scored row is appended to OUT/results.csv.

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/fewshot.py --site nepal --k 3 10 --draws 0 1 \\
      --loso runs/rgb-loso --out runs/rgb-fewshot [--recipe scene_norm]
``--recipe`` names the recipe file (RECIPE.yaml, default base) whose inputs, network and
augmentation every method uses; BUDGET and METHODS below override its training length and rates.
``--budget F`` trains F times BUDGET's epochs (README.md, "Few-shot, third round").
"""

import argparse
import csv
import json
import time
from pathlib import Path

import yaml

from slidemap.io.modelfile import load_model
from slidemap.schema.config import parse_config
from slidemap.train.finetune import score_on_val
from slidemap.train.loop import train

HERE = Path(__file__).parent
DATA = "../shared/data"
# The few-shot recipe, fixed before the runs (README.md): the same windows for every method.
BUDGET = {"epochs": 20, "windows_per_epoch": 32}
METHODS = {
    # from scratch, the base recipe's learning rate
    "scratch": {"lr": 0.002},
    # all layers from the LOSO model at the scratch rate
    "finetune": {"lr": 0.002},
    # the recipe: half the rate, the pretrained encoder at a tenth of that
    "finetune-slow-encoder": {"lr": 0.001, "encoder_lr": 0.1},
    # second round (README.md, "Few-shot, second round"): all layers at a quarter of the rate
    "finetune-low-lr": {"lr": 0.0005},
    # linear probing then fine-tuning: the encoder frozen for the first quarter, half the rate
    "finetune-frozen-first": {"lr": 0.001, "frozen_epochs": 5},
}


def run_config(site: str, k: int, draw: int, method: str, loso: Path, scored: bool,
               recipe: str = "base", budget: int = 1) -> dict:
    base = yaml.safe_load((HERE / f"{recipe}.yaml").read_text())
    split = {"count": k, "seed": draw}
    raw = {"name": f"{site}-k{k}-d{draw}-{method}",
           "data": {"train": [{"patches": f"{DATA}/{site}", "split": {**split, "part": "train"}}]},
           **base}
    if scored:
        raw["data"]["val"] = [{"patches": f"{DATA}/{site}", "split": {**split, "part": "rest"}}]
    raw["training"].update(BUDGET, seed=draw, **METHODS[method])
    raw["training"]["epochs"] *= budget
    if method != "scratch":
        raw["init"] = str(loso / site / "model.safetensors")
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True)
    parser.add_argument("--k", type=int, nargs="+", required=True)
    parser.add_argument("--draws", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--loso", type=Path, default=Path("runs/rgb-loso"))
    parser.add_argument("--out", type=Path, default=Path("runs/rgb-fewshot"))
    parser.add_argument("--recipe", default="base")
    parser.add_argument("--budget", type=int, default=1, help="times BUDGET's epochs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k in args.k:
        for draw in args.draws:
            start = args.loso / args.site / "model.safetensors"
            zero = ["zero-shot"] if start.exists() else []  # scratch needs no LOSO model
            for method in [*zero, *args.methods]:
                name = f"{args.site}-k{k}-d{draw}-{method}"
                scoring = parse_config(run_config(args.site, k, draw, "scratch", args.loso,
                                                  True, args.recipe))
                seconds = 0.0
                if method == "zero-shot":
                    model = start
                else:
                    run = args.out / name
                    model = run / "model.safetensors"
                    if not model.exists():
                        started = time.process_time()
                        train(parse_config(run_config(args.site, k, draw, method, args.loso,
                                                      False, args.recipe, args.budget)), run,
                              overwrite=True)
                        seconds = time.process_time() - started
                        (run / "cpu_seconds.json").write_text(json.dumps(seconds) + "\n")
                    else:
                        seconds = json.loads((run / "cpu_seconds.json").read_text())
                figures = score_on_val(load_model(model), scoring)
                row = {"site": args.site, "k": k, "draw": draw, "method": method,
                       **{f: round(figures[f], 4) for f in ("precision", "recall", "f1", "iou")},
                       "cpu_s": round(seconds), "model": str(model)}
                print(json.dumps(row), flush=True)
                results = args.out / "results.csv"
                fresh = not results.exists()
                with results.open("a", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    if fresh:
                        writer.writeheader()
                    writer.writerow(row)


if __name__ == "__main__":
    main()
