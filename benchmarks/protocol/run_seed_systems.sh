#!/usr/bin/env bash
# The seed systems through the protocol (benchmarks/protocol/README.md, *The seed systems on new
# ground*): each SYSTEM's config (SYSTEM_terrain.yaml: the U-Net terrain recipe with only the
# model changed) as the candidate against unet_terrain.yaml as the baseline, same inputs, budget,
# blocks, folds and seeds, decided by RULE.md. Usage: run_seed_systems.sh SYSTEM [SYSTEM ...]
# with SYSTEM one of fusion, da_unet, unetpp_attention, segformer. The baseline's folds are
# reused from out/protocol/terrain_vs_elevation (run.sh) when that run exists (crossval checks
# that they were trained from the same config, seeds, blocks and data); otherwise they are trained
# here. Rerunning continues where a run stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
for system in "$@"; do
  out=out/protocol/${system}_vs_terrain
  if [ -d out/protocol/terrain_vs_elevation/candidate ] && [ ! -e "$out/baseline" ]; then
    mkdir -p "$out"
    cp -al out/protocol/terrain_vs_elevation/candidate "$out/baseline"
  fi
  .venv/bin/slidemap crossval "benchmarks/protocol/${system}_terrain.yaml" \
    --baseline benchmarks/protocol/unet_terrain.yaml --out "$out" --seeds 0,1
  cp "$out/summary.md" "benchmarks/protocol/${system}_vs_terrain.md"
  cp "$out/blocks.csv" "benchmarks/protocol/${system}_vs_terrain_blocks.csv"
done
