"""Score each leave-one-site-out model on the whole site it never saw (one confusion matrix
over all its labelled pixels, read as in training: patches at scale 0.5 and brought back to
their own grid, Jinsha's scenes at 1 m) and print the table rows.

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/score_loso.py runs/rgb-loso [SITE ...] [--recipe NAME]
(default: every site whose model is there, read with base.yaml's inputs; --recipe scene_norm reads
with scene_norm.yaml's); figures also in runs/rgb-loso/SITE/heldout.json.
"""

import json
import sys
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


def main() -> None:
    args = sys.argv[1:]
    recipe = "base"
    if "--recipe" in args:
        at = args.index("--recipe")
        recipe = args[at + 1]
        del args[at:at + 2]
    runs = Path(args[0])
    sites = args[1:] or list(SITES)
    print("| site held out | trained on | precision | recall | F1 | IoU | labelled pixels |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for site in sites:
        model = runs / site / "model.safetensors"
        if not model.exists():
            continue
        figures = score_on_val(load_model(model), parse_config(site_config(site, recipe)))
        (runs / site / "heldout.json").write_text(json.dumps(figures, indent=2) + "\n")
        rest = ", ".join(s for s in SITES if s != site)
        print(f"| {site} | {rest} | {figures['precision']:.3f} | {figures['recall']:.3f} | "
              f"**{figures['f1']:.3f}** | {figures['iou']:.3f} | {int(figures['pixels']):,} |",
              flush=True)


if __name__ == "__main__":
    main()
