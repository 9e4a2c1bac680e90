#!/usr/bin/env bash
# DA-U-Net against the U-Net, both on terrain descriptors, through the protocol at the shipped
# budget (README.md beside this file). Each recipe trains its 8 folds × seeds in its own stream
# (two single-threaded streams side by side, about 100 min on the 2-core CPU); the comparison
# then links both into one folder and scores them together (crossval reuses scored folds and
# checks that they came from the same config, seeds and blocks). Rerunning continues where it
# stopped.
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=benchmarks/protocol/shipped
out=out/protocol/shipped
nice -n 10 .venv/bin/slidemap crossval $here/unet_terrain.yaml --out $out/unet --seeds 0,1 &
nice -n 10 .venv/bin/slidemap crossval $here/da_unet_terrain.yaml --out $out/da_unet --seeds 0,1 &
wait -n && wait -n
pair=$out/da_unet_vs_unet
mkdir -p $pair
[ -e $pair/candidate ] || cp -al $out/da_unet/candidate $pair/candidate
[ -e $pair/baseline ] || cp -al $out/unet/candidate $pair/baseline
.venv/bin/slidemap crossval $here/da_unet_terrain.yaml --baseline $here/unet_terrain.yaml \
  --out $pair --seeds 0,1
cp $pair/summary.md $here/da_unet_vs_unet.md
cp $pair/blocks.csv $here/da_unet_vs_unet_blocks.csv
