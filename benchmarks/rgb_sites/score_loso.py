"""Score each leave-one-site-out model on the whole site it never saw (one confusion matrix
over all its labelled pixels, read as in training: patches at scale 0.5 and brought back to
their own grid, Jinsha's scenes at 1 m) and print the table rows.

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/score_loso.py runs/rgb-loso [SITE ...] [--recipe NAME]
      [--scales S [S ...]]
(default: every site whose model is there, read with base.yaml's inputs; --recipe scene_norm reads
with scene_norm.yaml's); figures also in runs/rgb-loso/SITE/heldout.json. --scales predicts every
window at these scales and averages them instead of the model file's own (README.md, "Multi-scale
prediction"), and writes heldout-scales-S1-S2.json instead.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import yaml
from make_configs import HERE, SITES

from slidemap.io.modelfile import load_model
from slidemap.schema.config import parse_config
from slidemap.train.finetune import score_on_val


def site_config(site: str, recipe: str = "base") -> dict:
    base = yaml.safe_load((HERE / f"{recipe}.yaml").read_text())
    sources = SITES[site][0]
    return {"name": f"score-{site}", "data": {"train": sources, "val": sources}, **base}


def scales_tag(scales: tuple[float, ...]) -> str:
    """The file tag of a set of prediction scales: (1.0, 0.5) -> 'scales-1-0.5'."""
    return "scales-" + "-".join(f"{s:g}" for s in scales)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="holds SITE/model.safetensors")
    parser.add_argument("sites", nargs="*", help="default: every site whose model is there")
    parser.add_argument("--recipe", default="base", help="read with RECIPE.yaml's inputs")
    parser.add_argument("--scales", nargs="+", type=float, help="prediction scales to average")
    args = parser.parse_intermixed_args()
    recipe, runs, sites = args.recipe, args.runs, args.sites or list(SITES)
    scales = None if args.scales is None else tuple(args.scales)
    name = "heldout.json" if scales is None else f"heldout-{scales_tag(scales)}.json"
    print("| site held out | trained on | precision | recall | F1 | IoU | labelled pixels |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for site in sites:
        model = runs / site / "model.safetensors"
        if not model.exists():
            continue
        bundle = load_model(model)
        if scales is not None:
            bundle = replace(bundle, predict=replace(bundle.predict, scales=scales))
        figures = score_on_val(bundle, parse_config(site_config(site, recipe)))
        (runs / site / name).write_text(json.dumps(figures, indent=2) + "\n")
        rest = ", ".join(s for s in SITES if s != site)
        print(f"| {site} | {rest} | {figures['precision']:.3f} | {figures['recall']:.3f} | "
              f"**{figures['f1']:.3f}** | {figures['iou']:.3f} | {int(figures['pixels']):,} |",
              flush=True)


if __name__ == "__main__":
    main()
