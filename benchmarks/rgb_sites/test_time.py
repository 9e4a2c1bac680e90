"""Score the leave-one-site-out models after adapting them to the site they never saw, without
its labels (README.md, "Seventh comparison: adapting to the new site at prediction time"):

- ``stats``: the input bands standardised by the site's own mean and deviation (over all its
  imagery pixels at the working scale) instead of the training sites';
- ``adabn``: every batch-norm layer's running mean and variance re-estimated from random windows
  of the site's imagery (AdaBN, Li et al. 2016); the weights are not touched;
- ``stats-adabn``: both, the batch-norm statistics taken on the site-standardised inputs.

Writes RUNS/SITE/heldout-VARIANT.json, which compare.py reads as ``RECIPE:VARIANT`` for RUNS =
runs/rgb-loso-RECIPE-sSEED (the eighth comparison adapts the ``domain_batches`` recipe's models).

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/test_time.py runs/rgb-loso-base-s0 [--windows 512]
"""

import argparse
import copy
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from make_configs import SITES
from score_loso import site_config
from torch import nn

from slidemap.data.sources import load_arrays
from slidemap.evaluation.scorer import score_bundle
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.schema.config import parse_config

VARIANTS = ("stats", "adabn", "stats-adabn")
MODEL = "model.safetensors"  # of each site, in RUNS/SITE/
WINDOW = 128  # px at the working scale: the training windows' size
BATCH = 8  # the training batch: batch statistics are averaged over batches of this size


def site_stats(arrays: list) -> tuple[list[float], list[float]]:
    """Per-band mean and deviation over every imagery pixel of the site (labels unused)."""
    values = np.concatenate([a.x[:, a.imagery].astype(np.float64) for a in arrays], axis=1)
    return values.mean(axis=1).tolist(), values.std(axis=1).tolist()


def random_windows(arrays: list, mean: list[float], std: list[float], count: int,
                   seed: int) -> list[torch.Tensor]:
    """``count`` windows, each centred on a random imagery pixel of an item drawn by its imagery
    pixels, standardised with ``mean``/``std`` and nodata at 0 (the mean), as prediction reads
    them; in batches of ``BATCH``."""
    rng = np.random.default_rng(seed)
    where = [np.argwhere(a.imagery) for a in arrays]
    weights = np.array([len(w) for w in where], dtype=np.float64)
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    crops = []
    for item in rng.choice(len(arrays), size=count, p=weights / weights.sum()):
        x = arrays[item].x
        r, c = where[item][rng.integers(len(where[item]))]
        top = int(np.clip(r - WINDOW // 2, 0, max(x.shape[1] - WINDOW, 0)))
        left = int(np.clip(c - WINDOW // 2, 0, max(x.shape[2] - WINDOW, 0)))
        crop = (x[:, top:top + WINDOW, left:left + WINDOW] - m) / s
        padded = np.zeros((x.shape[0], WINDOW, WINDOW), dtype=np.float32)
        padded[:, :crop.shape[1], :crop.shape[2]] = np.nan_to_num(crop, nan=0.0)
        crops.append(padded)
    return [torch.from_numpy(np.stack(crops[i:i + BATCH])) for i in range(0, count, BATCH)]


def adabn(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are the plain average over
    ``batches`` (momentum None); everything else in evaluation mode and unchanged."""
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for batch in batches:
            adapted(batch)
    for norm in norms:
        norm.momentum = 0.1
    return adapted.eval()


def variant(bundle: ModelBundle, name: str, arrays: list, windows: int) -> ModelBundle:
    mean, std = site_stats(arrays) if name.startswith("stats") else (bundle.mean, bundle.std)
    bundle = replace(bundle, mean=mean, std=std)
    if name.endswith("adabn"):
        batches = random_windows(arrays, mean, std, windows, seed=0)
        bundle = replace(bundle, model=adabn(bundle.model, batches))
    return bundle


def loso_command(runs: Path) -> str:
    """The loso.sh line that trains the models ``runs`` is to hold (runs/rgb-loso-RECIPE-sSEED)."""
    named = re.fullmatch(r"rgb-loso-(.+)-s(\d+)", runs.name)
    recipe, seed = named.groups() if named else ("RECIPE", "SEED")
    return f"bash benchmarks/rgb_sites/loso.sh {recipe} {seed}"


def check_models(runs: Path) -> None:
    """Every site's model is there before any site's data is read: one line naming the
    training to run first, not a traceback after the first site's scoring."""
    missing = [site for site in SITES if not (runs / site / MODEL).exists()]
    if missing:
        sys.exit(f"error: no {MODEL} for {', '.join(missing)} in {runs}: "
                 f"run {loso_command(runs)} first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    check_models(args.runs)
    print("| site held out | variant | precision | recall | F1 | IoU |")
    print("| --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    for site in SITES:
        config = parse_config(site_config(site))
        arrays = load_arrays(config.val_scenes, config.val_patches, config.inputs)
        bundle = replace(load_model(args.runs / site / MODEL),
                         inputs=config.inputs)
        for name in args.variants:
            figures = score_bundle(variant(bundle, name, arrays, args.windows), arrays,
                                   config.train.precision, config.predict.batch_size).metrics()
            (args.runs / site / f"heldout-{name}.json").write_text(
                json.dumps(figures, indent=2) + "\n")
            print(f"| {site} | {name} | {figures['precision']:.3f} | {figures['recall']:.3f} | "
                  f"**{figures['f1']:.3f}** | {figures['iou']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
