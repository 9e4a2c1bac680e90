#!/usr/bin/env bash
# Cross-region estimate of the shipped recipes (models/README.md): train on one Jinsha region,
# score on the other, both directions, two seeds (three for fusion), for three recipes: the
# U-Net ("base"), the U-Net with brightness and contrast jitter ±40 % instead of ±20 % ("strong
# jitter") and the two-stream fusion network ("fusion"); each model plain, with --tta, and its
# seeds as an ensemble; then U-Net and fusion together (seeds 0 and 1 of each: four models).
# Two brightness-invariant variants of the fusion recipe, seed 0 only: chromaticity instead of
# RGB ("chroma") and random brightness inversion ("invert"). Runs that exist are not trained
# again. About 12 min per U-Net training and 16 min per fusion training on a 2-core CPU running
# two at once (18 trainings), seconds per evaluation.
#
#   bash benchmarks/cross_region/run.sh [RUNS_DIR [OUT_DIR]]      (defaults runs/xr, out/xr)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/xr}
OUT=${2:-out/xr}
DATA=../shared/data/jinsha
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SLIDEMAP=.venv/bin/slidemap
rows=()

evaluate() {  # evaluate NAME REGION [slidemap evaluate options...]
  local name=$1 region=$2
  shift 2
  if [[ ! -f $OUT/$name/metrics.json ]]; then
    $SLIDEMAP evaluate "$DATA/region_${region}_mask.tif" --image "$DATA/region_${region}_image.tif" \
      --dem "$DATA/region_${region}_dsm.tif" --out "$OUT/$name" "$@" > /dev/null
  fi
}

for recipe in fusion base strong_jitter chroma invert; do
  for direction in B_score_A A_score_B; do
    config=benchmarks/cross_region/train_${direction}.yaml
    [[ $recipe == base ]] || config=benchmarks/cross_region/train_${direction}_${recipe}.yaml
    scored=${direction: -1}
    label="${direction:0:1} → ${scored}, ${recipe/_/ }"
    members=()
    seeds=(0 1)
    [[ $recipe != fusion ]] || seeds=(0 1 2)
    [[ $recipe != chroma && $recipe != invert ]] || seeds=(0)
    for seed in "${seeds[@]}"; do
      run=$RUNS/${direction}_${recipe}_s${seed}
      [[ -f $run/summary.json ]] || $SLIDEMAP train "$config" --seed "$seed" --out "$run" --overwrite
      model=$run/model.safetensors
      members+=(--model "$model")
      evaluate "${direction}_${recipe}_s${seed}" "$scored" --model "$model"
      evaluate "${direction}_${recipe}_s${seed}_tta" "$scored" --model "$model" --tta
      rows+=("$label, seed $seed=$OUT/${direction}_${recipe}_s${seed}/metrics.json"
             "$label, seed $seed, TTA=$OUT/${direction}_${recipe}_s${seed}_tta/metrics.json")
    done
    (( ${#seeds[@]} > 1 )) || continue
    evaluate "${direction}_${recipe}_ensemble" "$scored" "${members[@]}"
    joined=$(printf ' + %s' "${seeds[@]}")
    rows+=("$label, ensemble of seeds ${joined:3}=$OUT/${direction}_${recipe}_ensemble/metrics.json")
  done
done
for direction in B_score_A A_score_B; do
  members=()
  for recipe in base fusion; do
    for seed in 0 1; do members+=(--model "$RUNS/${direction}_${recipe}_s${seed}/model.safetensors"); done
  done
  evaluate "${direction}_base+fusion_ensemble" "${direction: -1}" "${members[@]}"
  rows+=("${direction:0:1} → ${direction: -1}, U-Net + fusion, ensemble of 4=$OUT/${direction}_base+fusion_ensemble/metrics.json")
done
.venv/bin/python benchmarks/cross_region/table.py "${rows[@]}"
