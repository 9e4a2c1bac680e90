#!/usr/bin/env bash
# What `slidemap predict --adapt` costs a user, recorded in benchmarks/protocol/adapt.md: region B
# (9.1 Mpx at 0.5 m; 2 m working grid) mapped with one of the protocol's fold models, without and
# with adaptation at its defaults (3 min, 512 windows), wall time and peak memory by GNU time.
set -euo pipefail
cd "$(dirname "$0")/../.."
scene=(../shared/data/jinsha/region_B_image.tif --dem ../shared/data/jinsha/region_B_dsm.tif)
model=out/protocol/terrain_vs_elevation/candidate/s0/fold0/model.safetensors
for mode in plain adapted; do
  extra=()
  [ "$mode" = adapted ] && extra=(--adapt)
  nice -n 10 /usr/bin/time -f "$mode: %e s wall, %U s user, %M KB peak RSS" \
    .venv/bin/slidemap predict "${scene[@]}" --model "$model" --out "out/adapt_cost/$mode" \
    --overwrite "${extra[@]}" 2>&1 | grep -E "^$mode:|adapted to|landslides,"
done
