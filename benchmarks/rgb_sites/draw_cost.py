"""Seconds to draw one epoch's windows and batches (no network) as training does, for the
Jinsha-held-out LOSO config, in mixed and in domain batches (ninth_comparison.md).

Usage (repository root): .venv/bin/python benchmarks/rgb_sites/draw_cost.py
"""
import argparse
import time

from slidemap.data.dataset import RandomWindows, scene_stats
from slidemap.data.sources import load_arrays
from slidemap.schema.load import load_config

# No arguments, but --help prints usage and a stray argument is refused.
argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
config = load_config("benchmarks/rgb_sites/loso-domain_batches-jinsha.yaml")
arrays = load_arrays(config.train_scenes, config.train_patches, config.inputs)
s = config.train
for domains in (False, True):
    windows = RandomWindows(arrays, scene_stats(arrays), s.tile, s.windows_per_epoch, s.min_valid,
                            s.augment, s.seed, None, domains)
    t0 = time.perf_counter()
    for epoch in range(1, 4):
        for _ in windows.epoch(epoch, s.batch_size):
            pass
    seconds = (time.perf_counter() - t0) / 3
    print("domain_batches" if domains else "mixed", f"{seconds:.2f} s per epoch")
