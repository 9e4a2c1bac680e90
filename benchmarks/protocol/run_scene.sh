#!/usr/bin/env bash
# Per-scene photometric normalisation (candidate) against the terrain-descriptor recipe
# (baseline), after run.sh: the baseline's folds are those run.sh trained as its candidate (the
# same config, seeds, blocks and data, which crossval checks), so only the candidate trains here.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=out/protocol/scene_vs_terrain
mkdir -p "$out"
[ -d "$out/baseline" ] || cp -r out/protocol/terrain_vs_elevation/candidate "$out/baseline"
nice -n 10 .venv/bin/slidemap crossval benchmarks/protocol/unet_terrain_scene.yaml \
  --baseline benchmarks/protocol/unet_terrain.yaml --out "$out" --seeds 0,1
cp "$out/summary.md" benchmarks/protocol/scene_vs_terrain.md
cp "$out/blocks.csv" benchmarks/protocol/scene_vs_terrain_blocks.csv
