"""Score one model on whole RGB sites, read as the leave-one-site-out runs read them (base.yaml's
inputs: patches at scale 0.5 and brought back to their own grid, Jinsha's scenes at 1 m), one
confusion matrix per site at the model's threshold; for how well an all-sites model fits the
sites it trained on (README.md, *Fifth recipe*).

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/score_own_sites.py MODEL [SITE ...]
(default: every site).
"""

import argparse

from make_configs import SITES
from score_loso import site_config

from slidemap.io.modelfile import load_model
from slidemap.schema.config import parse_config
from slidemap.train.finetune import score_on_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model file (.safetensors)")
    parser.add_argument("sites", nargs="*", help=f"default: every site ({', '.join(SITES)})")
    args = parser.parse_args()
    sites = args.sites or list(SITES)
    bundle = load_model(args.model)
    print("| site | precision | recall | F1 | IoU | AUC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for site in sites:
        figures = score_on_val(bundle, parse_config(site_config(site)))
        print(f"| {site} | {figures['precision']:.3f} | {figures['recall']:.3f} | "
              f"**{figures['f1']:.3f}** | {figures['iou']:.3f} | {figures['auc']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
