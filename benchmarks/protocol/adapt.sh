#!/usr/bin/env bash
# Scene adaptation (slidemap predict --adapt) measured in the protocol, as recorded in
# benchmarks/protocol/adapt.md: the terrain recipe's fold models of run.sh (reused; trained
# first if missing), each adapted to each of its held-out blocks without their labels, against
# the same models as trained. One CPU thread; rerunning continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
nice -n 10 .venv/bin/slidemap crossval benchmarks/protocol/unet_terrain.yaml \
  --baseline benchmarks/protocol/unet_elevation.yaml --out out/protocol/terrain_vs_elevation \
  --seeds 0,1 --adapt --adapt-windows 128 --adapt-minutes 3
cp out/protocol/terrain_vs_elevation/adapt/summary.md benchmarks/protocol/adapt_summary.md
cp out/protocol/terrain_vs_elevation/adapt/blocks.csv benchmarks/protocol/adapt_blocks.csv
