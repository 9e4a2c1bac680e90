#!/usr/bin/env bash
# Spatial cross-validation of the shipped recipe (benchmarks/experiments.md, *Trained on both regions*):
# each Jinsha region is cut into a west and an east half, 64 m apart (crop.py); the recipe of
# configs/jinsha-fusion.yaml (an ensemble of two networks, seeds 0 and 1) trains on the west halves
# of both regions and is scored on the east halves, and the reverse. Unlike the cross-region runs,
# the model has seen both regions, as the shipped one has. The ensemble and each of its networks
# are scored as shipped (the sidecar: multi-scale, threshold 0.35), and figures are pooled over
# the scored halves (table.py). Runs that exist are not trained again; about 15-18 min per fold,
# its two networks side by side on a 2-core CPU, so 30-36 min in all.
#
# A variant (train_FOLD_VARIANT.yaml) is scored as one model: hard and epochs30 are one network,
# seed 0, and train both folds at once; members3 is the shipped ensemble with a third network
# (seeds 0, 1, 2: the first two as in the plain run), one fold at a time, about 22 min each.
#
#   bash benchmarks/spatial_cv/run.sh [VARIANT]
#   (runs in runs/spatial_cv[/VARIANT], evaluations in out/spatial_cv[/VARIANT])
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANT=${1:-}
RUNS=runs/spatial_cv${VARIANT:+/$VARIANT}
OUT=out/spatial_cv${VARIANT:+/$VARIANT}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SLIDEMAP=.venv/bin/slidemap
HALVES=runs/spatial_cv/data  # where the configs read the halves
.venv/bin/python benchmarks/spatial_cv/crop.py ../shared/data/jinsha "$HALVES"

train() {
  [[ -f $RUNS/$1/summary.json ]] || $SLIDEMAP train \
    "benchmarks/spatial_cv/train_$1${VARIANT:+_$VARIANT}.yaml" --out "$RUNS/$1" --overwrite
}
if [[ -z $VARIANT || $VARIANT == members3 ]]; then  # one fold at a time: its networks share the cores
  train west
  train east
else  # one network per fold: both folds at once
  train west & west=$!
  train east & east=$!
  wait $west
  wait $east
fi
models=(${VARIANT:-ensemble member-0 member-1})
rows=()
for model in "${models[@]}"; do
  for train in west east; do
    scored=$([[ $train == west ]] && echo east || echo west)
    file=$RUNS/$train/model.safetensors
    [[ $model == member-* ]] && file=$RUNS/$train/$model/model.safetensors
    for region in A B; do
      name=${model}_train_${train}_score_${region}_${scored}
      [[ -f $OUT/$name/metrics.json ]] || $SLIDEMAP evaluate "$HALVES/region_${region}_${scored}_mask.tif" \
        --image "$HALVES/region_${region}_${scored}_image.tif" --dem "$HALVES/region_${region}_${scored}_dsm.tif" \
        --model "$file" --out "$OUT/$name" > /dev/null
      rows+=("${model}: trained on the ${train} halves, scored on ${region} ${scored}=$OUT/$name/metrics.json")
    done
  done
done
.venv/bin/python benchmarks/spatial_cv/table.py "${rows[@]}"
