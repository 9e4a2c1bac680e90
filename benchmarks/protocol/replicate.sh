#!/usr/bin/env bash
# The replication of benchmarks/protocol/REPLICATION.md: the two comparisons whose decision the
# rerun changed, on seeds 2 and 3 alone. Each recipe trains once (the U-Net terrain folds serve
# both comparisons; crossval checks config, seeds, blocks and data). Rerunning continues where it
# stopped. About 30 min here, one training at a time. Needs run.sh and
# run_seed_systems.sh da_unet first, for the four-seed figures at the end.
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
# Figures pooled over the four seeds (REPLICATION.md: reported, deciding nothing): the folds of
# seeds 0 and 1 (run.sh, run_seed_systems.sh da_unet) and 2 and 3 (above) linked into one folder
# each and scored together; nothing is retrained.
four=out/protocol/four_seeds
link() {  # link SOURCE_RECIPE_DIR SEED TARGET_RECIPE_DIR
  mkdir -p "$3"; [ -e "$3/s$2" ] || cp -al "$1/s$2" "$3/s$2"
}
for seed in 0 1; do
  link out/protocol/terrain_vs_elevation/candidate $seed $four/terrain_vs_elevation/candidate
  link out/protocol/terrain_vs_elevation/baseline $seed $four/terrain_vs_elevation/baseline
  link out/protocol/da_unet_vs_terrain/candidate $seed $four/da_unet_vs_terrain/candidate
  link out/protocol/terrain_vs_elevation/candidate $seed $four/da_unet_vs_terrain/baseline
done
for seed in 2 3; do
  link "$terrain/candidate" $seed $four/terrain_vs_elevation/candidate
  link "$terrain/baseline" $seed $four/terrain_vs_elevation/baseline
  link "$da/candidate" $seed $four/da_unet_vs_terrain/candidate
  link "$terrain/candidate" $seed $four/da_unet_vs_terrain/baseline
done
.venv/bin/slidemap crossval $P/unet_terrain.yaml --baseline $P/unet_elevation.yaml \
  --out $four/terrain_vs_elevation --seeds 0,1,2,3
.venv/bin/slidemap crossval $P/da_unet_terrain.yaml --baseline $P/unet_terrain.yaml \
  --out $four/da_unet_vs_terrain --seeds 0,1,2,3
cp $four/terrain_vs_elevation/summary.md $P/four_seeds_terrain_vs_elevation.md
cp $four/da_unet_vs_terrain/summary.md $P/four_seeds_da_unet_vs_terrain.md
