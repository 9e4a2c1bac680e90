#!/usr/bin/env bash
# The replication of benchmarks/protocol/REPLICATION.md: the two comparisons whose decision the
# rerun changed, on seeds 2 and 3 alone. Each recipe trains once (the U-Net terrain folds serve
# both comparisons; crossval checks config, seeds and blocks). Rerunning continues where it
# stopped. About 30 min here, one training at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=benchmarks/protocol
terrain=out/protocol/replication/terrain_vs_elevation
da=out/protocol/replication/da_unet_vs_terrain
nice -n 10 .venv/bin/slidemap crossval $P/unet_terrain.yaml --baseline $P/unet_elevation.yaml \
  --out "$terrain" --seeds 2,3
if [ ! -e "$da/baseline" ]; then
  mkdir -p "$da"
  cp -al "$terrain/candidate" "$da/baseline"
fi
nice -n 10 .venv/bin/slidemap crossval $P/da_unet_terrain.yaml --baseline $P/unet_terrain.yaml \
  --out "$da" --seeds 2,3
cp "$terrain/summary.md" $P/replication_terrain_vs_elevation.md
cp "$terrain/blocks.csv" $P/replication_terrain_vs_elevation_blocks.csv
cp "$da/summary.md" $P/replication_da_unet_vs_terrain.md
cp "$da/blocks.csv" $P/replication_da_unet_vs_terrain_blocks.csv
