#!/usr/bin/env bash
# The DA-U-Net comparison made again with the buffer that reaches past a scene's edge (754f2c7):
# DA-U-Net's 8 folds × seeds trained in two single-threaded streams, one per seed, then scored
# against the U-Net's folds of the rerun (out/protocol/fixed/s0, s1; README.md beside this file
# gives their command). Nothing of the U-Net is retrained. Rerunning continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=benchmarks/protocol/shipped
out=out/protocol/fixed
for s in 0 1; do
  nice -n 5 .venv/bin/slidemap crossval $here/da_unet_terrain.yaml --out $out/da_s$s --seeds $s \
    >$out/da_s$s.log 2>&1 &
done
wait -n && wait -n
pair=$out/da_unet_vs_unet
mkdir -p $pair/candidate $pair/baseline
for s in 0 1; do
  [ -e $pair/candidate/s$s ] || cp -al $out/da_s$s/candidate/s$s $pair/candidate/
  [ -e $pair/baseline/s$s ] || cp -al $out/s$s/candidate/s$s $pair/baseline/
done
cp $out/s0/blocks_layout.json $pair/
.venv/bin/slidemap crossval $here/da_unet_terrain.yaml --baseline $here/unet_terrain.yaml \
  --out $pair --seeds 0,1
cp $pair/summary.md $here/da_unet_rerun.md
cp $pair/blocks.csv $here/da_unet_rerun_blocks.csv
