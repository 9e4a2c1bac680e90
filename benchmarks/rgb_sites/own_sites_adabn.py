"""Diagnosis only (decides nothing): an all-sites RGB model scored on each of its own training
sites as stored, with its batch-norm statistics re-estimated (AdaBN) from 512 windows of that
site, and from 128 windows of each of the four sites; F1 at the model's threshold.

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/own_sites_adabn.py models/slidemap-rgb-sites.safetensors
"""
import argparse
from dataclasses import replace

from make_configs import SITES
from score_loso import site_config
from test_time import adabn, random_windows

from slidemap.data.sources import load_arrays
from slidemap.evaluation.scorer import score_bundle
from slidemap.io.modelfile import load_model
from slidemap.schema.config import parse_config

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("model", help="an all-sites RGB model file (.safetensors)")
bundle = load_model(parser.parse_args().model)
configs = {s: parse_config(site_config(s)) for s in SITES}
arrays = {s: load_arrays(c.val_scenes, c.val_patches, c.inputs) for s, c in configs.items()}
pooled = [b for s in SITES for b in random_windows(arrays[s], bundle.mean, bundle.std, 128, 0)]
everywhere = replace(bundle, model=adabn(bundle.model, pooled))
print("| site | as stored | AdaBN on the site | AdaBN on all four sites |")
print("| --- | ---: | ---: | ---: |")
for site, config in configs.items():
    windows = random_windows(arrays[site], bundle.mean, bundle.std, 512, 0)
    own = replace(bundle, model=adabn(bundle.model, windows))
    row = [score_bundle(replace(b, inputs=config.inputs), arrays[site], config.train.precision,
                        config.predict.batch_size).metrics()["f1"]
           for b in (bundle, own, everywhere)]
    print(f"| {site} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
