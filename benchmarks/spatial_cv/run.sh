#!/usr/bin/env bash
# Spatial cross-validation of the shipped recipe (models/README.md, *Trained on both regions*):
# each Jinsha region is cut into a west and an east half, 64 m apart (crop.py); the recipe of
# configs/jinsha-fusion.yaml trains on the west halves of both regions and is scored on the east
# halves, and the reverse. Unlike the cross-region runs, the model has seen both regions, as the
# shipped one has. Each half-region model is scored as shipped (its sidecar: multi-scale,
# threshold 0.35), and figures are pooled over the scored halves (table.py). Runs that exist are not trained again; about 15-18 min per
# training, two at once on a 2-core CPU.
#
#   bash benchmarks/spatial_cv/run.sh [RUNS_DIR [OUT_DIR]]      (defaults runs/spatial_cv, out/spatial_cv)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/spatial_cv}
OUT=${2:-out/spatial_cv}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SLIDEMAP=.venv/bin/slidemap
HALVES=runs/spatial_cv/data  # where the configs read the halves
.venv/bin/python benchmarks/spatial_cv/crop.py ../shared/data/jinsha "$HALVES"

for train in west east; do
  [[ -f $RUNS/$train/summary.json ]] || $SLIDEMAP train "benchmarks/spatial_cv/train_$train.yaml" \
    --out "$RUNS/$train" --overwrite &
done
wait
rows=()
for train in west east; do
  scored=$([[ $train == west ]] && echo east || echo west)
  for region in A B; do
    name=train_${train}_score_${region}_${scored}
    [[ -f $OUT/$name/metrics.json ]] || $SLIDEMAP evaluate "$HALVES/region_${region}_${scored}_mask.tif" \
      --image "$HALVES/region_${region}_${scored}_image.tif" --dem "$HALVES/region_${region}_${scored}_dsm.tif" \
      --model "$RUNS/$train/model.safetensors" --out "$OUT/$name" > /dev/null
    rows+=("trained on the ${train} halves, scored on ${region} ${scored}=$OUT/$name/metrics.json")
  done
done
.venv/bin/python benchmarks/spatial_cv/table.py "${rows[@]}"
