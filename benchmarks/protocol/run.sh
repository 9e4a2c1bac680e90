#!/usr/bin/env bash
# The protocol run recorded in benchmarks/protocol/README.md: relative terrain descriptors
# (candidate) against absolute elevation (baseline), U-Net, 2 seeds × 4 folds each, on one
# CPU thread. Rerunning continues where it stopped. About 40 min on a busy 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
nice -n 10 .venv/bin/slidemap crossval benchmarks/protocol/unet_terrain.yaml \
  --baseline benchmarks/protocol/unet_elevation.yaml --out out/protocol/terrain_vs_elevation \
  --seeds 0,1
cp out/protocol/terrain_vs_elevation/summary.md benchmarks/protocol/terrain_vs_elevation.md
cp out/protocol/terrain_vs_elevation/blocks.csv benchmarks/protocol/terrain_vs_elevation_blocks.csv
