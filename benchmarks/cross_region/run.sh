#!/usr/bin/env bash
# Cross-region estimate of the shipped recipes (benchmarks/experiments.md): train on one Jinsha region,
# score on the other, both directions, two seeds (three for fusion), for three recipes: the
# U-Net ("base"), the U-Net with brightness and contrast jitter ±40 % instead of ±20 % ("strong
# jitter") and the two-stream fusion network ("fusion"); each model plain, with --tta, and its
# seeds as an ensemble; then U-Net and fusion together (seeds 0 and 1 of each: four models).
# Two brightness-invariant variants of the fusion recipe, seed 0 only: chromaticity instead of
# RGB ("chroma") and random brightness inversion ("invert"); weight averaging over epochs 11-20
# ("swa", seed 0) and the fusion recipe trained at 3 m instead of 2 m ("fusion3m": seed 0, and
# seed 1 for A → B, the direction where seeds disagree most). The fusion models are also
# scored with the scene's own statistics (--normalise scene) and asked to work at
# 3 m and 4 m (a copy of the model file whose sidecar says resolution_m 3.0 or 4.0). The fusion recipe with
# relief (elevation above the mean within 250 m) instead of elevation ("relief") is scored like
# the fusion recipe, and both (seed 0) are scored again with the scored region's DEM shifted by
# ±20 m and ±60 m (another vertical datum, or a site higher or lower in the valley). Fusion, U-Net
# and relief models are scored again as the shipped models run (their sidecars' predict block):
# windows of 512 working px, each also predicted at half its side and the two averaged
# ("multi-scale"); for the fusion seeds also each half of that alone. The fusion recipe with
# random zoom 0.5-1.4 instead of 0.7-1.4 ("zoomwide": windows also shrunk to half their side,
# as the multi-scale prediction's coarser view does) is scored plain and multi-scale, three
# seeds, and every two of its three seeds as an ensemble (the default model is two networks).
# The shipped recipe trained for 30 epochs instead of 20 ("epochs30", seed 0) is scored plain
# and multi-scale. Then the default model's seeds 0 + 1 and the U-Net's seeds stored as int8 (the
# shipped U-Net's storage), scored multi-scale. Then fourteen one-change variants of the default
# recipe (seed 0, multi-scale): Lovász hinge instead of Dice ("lovasz"), 384 px training windows
# ("tile384"), AdamW weight decay 0.05 instead of 0.0001 ("decay"), width 20 or 12 instead of
# 16 ("width20", "width12"), OHEM instead of BCE ("ohem"), random zoom down to 0.25
# ("zoomwider"), focal loss instead of BCE ("focal"), a zoom-out that reads wider ground
# ("zoomctx"), 15 epochs instead of 20 ("epochs15"), batches of 4 instead of 8 ("batch4"),
# learning rate 4e-3 or 1e-3 instead of 2e-3 ("lr4e3", "lr1e3") and instance-batch norm in the
# optical encoder ("ibn"); and the int8 pair with a third, quarter-side view or on 1024 px
# windows. Last, that pair stored as int4 (as the shipped fusion file is) and with every
# kernel in 4 bits.
# Every training is base.yaml (the U-Net, region A → B) plus the --set overrides of its recipe
# and direction in recipes.yaml (printed by overrides.py). Runs that exist are not trained again. About 12 min per U-Net training and 10-21 min
# per fusion training (25 min at 30 epochs) on a 2-core CPU running two at once (63 trainings),
# seconds per evaluation.
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

train() {  # train RECIPE DIRECTION SEED RUN: base.yaml with the recipe's overrides
  local sets
  mapfile -t sets < <(.venv/bin/python benchmarks/cross_region/overrides.py "$1" "$2")
  $SLIDEMAP train benchmarks/cross_region/base.yaml "${sets[@]}" --seed "$3" --out "$4" --overwrite
}

evaluate() {  # evaluate NAME REGION [--dem DEM] [slidemap evaluate options...]
  local name=$1 region=$2 dem=$DATA/region_${2}_dsm.tif
  shift 2
  if [[ ${1:-} == --dem ]]; then dem=$2; shift 2; fi
  if [[ ! -f $OUT/$name/metrics.json ]]; then
    $SLIDEMAP evaluate "$DATA/region_${region}_mask.tif" --image "$DATA/region_${region}_image.tif" \
      --dem "$dem" --out "$OUT/$name" "$@" > /dev/null
  fi
}

label_of() {  # label_of RECIPE
  case $1 in
    fusion3m) echo "fusion at 3 m" ;;
    swa) echo "fusion, weights averaged" ;;
    relief) echo "fusion with relief" ;;
    zoomwide) echo "fusion, zoom 0.5-1.4" ;;
    epochs30) echo "fusion, zoom 0.5-1.4, 30 epochs" ;;
    lovasz) echo "fusion, zoom 0.5-1.4, Lovász instead of Dice" ;;
    tile384) echo "fusion, zoom 0.5-1.4, 384 px training windows" ;;
    decay) echo "fusion, zoom 0.5-1.4, weight decay 0.05" ;;
    width20) echo "fusion, zoom 0.5-1.4, width 20" ;;
    ohem) echo "fusion, zoom 0.5-1.4, OHEM instead of BCE" ;;
    zoomwider) echo "fusion, zoom 0.25-1.4" ;;
    focal) echo "fusion, zoom 0.5-1.4, focal instead of BCE" ;;
    zoomctx) echo "fusion, zoom 0.5-1.4 reading wider ground" ;;
    width12) echo "fusion, zoom 0.5-1.4, width 12" ;;
    epochs15) echo "fusion, zoom 0.5-1.4, 15 epochs" ;;
    batch4) echo "fusion, zoom 0.5-1.4, batches of 4" ;;
    lr4e3) echo "fusion, zoom 0.5-1.4, learning rate 4e-3" ;;
    lr1e3) echo "fusion, zoom 0.5-1.4, learning rate 1e-3" ;;
    ibn) echo "fusion, zoom 0.5-1.4, instance-batch norm" ;;
    *) echo "${1/_/ }" ;;
  esac
}

seeds_of() {  # seeds_of RECIPE DIRECTION
  case $1/$2 in
    fusion/* | relief/* | zoomwide/*) echo 0 1 2 ;;
    chroma/* | invert/* | swa/* | epochs30/* | fusion3m/B_score_A) echo 0 ;;
    *) echo 0 1 ;;  # fusion3m: two seeds for A → B, the noisier direction
  esac
}

for recipe in fusion base strong_jitter chroma invert swa fusion3m relief zoomwide epochs30; do
  for direction in B_score_A A_score_B; do
    scored=${direction: -1}
    label="${direction:0:1} → ${scored}, $(label_of "$recipe")"
    members=()
    read -ra seeds <<< "$(seeds_of "$recipe" "$direction")"
    for seed in "${seeds[@]}"; do
      run=$RUNS/${direction}_${recipe}_s${seed}
      [[ -f $run/summary.json ]] || train "$recipe" "$direction" "$seed" "$run"
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
  scored=${direction: -1}
  for seed in 0 1 2; do
    run=$RUNS/${direction}_fusion_s${seed}
    evaluate "${direction}_fusion_s${seed}_scenenorm" "$scored" --model "$run/model.safetensors" \
      --normalise scene
    rows+=("${direction:0:1} → ${scored}, fusion, seed $seed, scene statistics=$OUT/${direction}_fusion_s${seed}_scenenorm/metrics.json")
    for metres in 3 4; do
      coarse=$OUT/models/${direction}_fusion_s${seed}_at${metres}m
      mkdir -p "$OUT/models"
      cp "$run/model.safetensors" "$coarse.safetensors"
      .venv/bin/python -c 'import json, sys; c = json.load(open(sys.argv[1]))
c["inputs"]["resolution_m"] = float(sys.argv[3]); json.dump(c, open(sys.argv[2], "w"))' \
        "$run/model.json" "$coarse.json" "$metres"
      evaluate "${direction}_fusion_s${seed}_at${metres}m" "$scored" --model "$coarse.safetensors"
      rows+=("${direction:0:1} → ${scored}, fusion, seed $seed, predicted at $metres m=$OUT/${direction}_fusion_s${seed}_at${metres}m/metrics.json")
    done
  done
done
for direction in B_score_A A_score_B; do
  scored=${direction: -1}
  for shift in -60 -20 20 60; do
    shifted=$OUT/dem/region_${scored}_dsm_${shift}m.tif
    mkdir -p "$OUT/dem"
    [[ -f $shifted ]] || .venv/bin/python -c 'import sys, rasterio
with rasterio.open(sys.argv[1]) as src:
    profile, dem = src.profile, src.read(1)
with rasterio.open(sys.argv[2], "w", **profile) as dst:
    dst.write(dem + float(sys.argv[3]), 1)' "$DATA/region_${scored}_dsm.tif" "$shifted" "$shift"
    for recipe in fusion relief; do
      name=${direction}_${recipe}_s0_dem${shift}m
      evaluate "$name" "$scored" --dem "$shifted" --model "$RUNS/${direction}_${recipe}_s0/model.safetensors"
      rows+=("${direction:0:1} → ${scored}, $(label_of "$recipe"), seed 0, DEM $(printf %+d "$shift") m=$OUT/$name/metrics.json")
    done
  done
done
SHIPPED_PREDICT=(--tile 512 --overlap 128 --scales 1,0.5)  # configs/jinsha-*.yaml, predict
for direction in B_score_A A_score_B; do
  scored=${direction: -1}
  for recipe in fusion base relief zoomwide epochs30; do
    members=()
    read -ra seeds <<< "$(seeds_of "$recipe" "$direction")"
    for seed in "${seeds[@]}"; do
      model=$RUNS/${direction}_${recipe}_s${seed}/model.safetensors
      members+=(--model "$model")
      name=${direction}_${recipe}_s${seed}_multiscale
      evaluate "$name" "$scored" --model "$model" "${SHIPPED_PREDICT[@]}"
      rows+=("${direction:0:1} → ${scored}, $(label_of "$recipe"), seed $seed, multi-scale=$OUT/$name/metrics.json")
      [[ $recipe == fusion ]] || continue
      evaluate "${name}_tile512" "$scored" --model "$model" --tile 512 --overlap 128
      evaluate "${name}_tile256" "$scored" --model "$model" --scales 1,0.5
      rows+=("${direction:0:1} → ${scored}, fusion, seed $seed, 512 px windows only=$OUT/${name}_tile512/metrics.json"
             "${direction:0:1} → ${scored}, fusion, seed $seed, scales 1 + 0.5 on 256 px windows=$OUT/${name}_tile256/metrics.json")
    done
    [[ $recipe == fusion || $recipe == zoomwide ]] || continue
    name=${direction}_${recipe}_ensemble_multiscale
    evaluate "$name" "$scored" "${members[@]}" "${SHIPPED_PREDICT[@]}"
    rows+=("${direction:0:1} → ${scored}, $(label_of "$recipe"), ensemble of seeds 0 + 1 + 2, multi-scale=$OUT/$name/metrics.json")
  done
done
for direction in B_score_A A_score_B; do  # the default model's ensemble of two, every pair
  for pair in 01 02 12; do
    name=${direction}_zoomwide_pair${pair}_multiscale
    evaluate "$name" "${direction: -1}" --model "$RUNS/${direction}_zoomwide_s${pair:0:1}/model.safetensors" \
      --model "$RUNS/${direction}_zoomwide_s${pair:1:1}/model.safetensors" "${SHIPPED_PREDICT[@]}"
    rows+=("${direction:0:1} → ${direction: -1}, fusion, zoom 0.5-1.4, ensemble of seeds ${pair:0:1} + ${pair:1:1}, multi-scale=$OUT/$name/metrics.json")
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
# int8 weights, as the shipped U-Net file stores them (slidemap export --weights int8): the default
# model's pair of seeds 0 + 1 and the U-Net's two seeds, run as shipped (multi-scale)
for direction in B_score_A A_score_B; do
  scored=${direction: -1}
  for recipe in zoomwide base; do
    for seed in 0 1; do
      small=$RUNS/int8/${direction}_${recipe}_s${seed}
      [[ -f $small.safetensors ]] || $SLIDEMAP export "$RUNS/${direction}_${recipe}_s${seed}/model.safetensors" \
        --weights int8 --out "$small" > /dev/null
    done
  done
  name=${direction}_zoomwide_pair01_multiscale_int8
  evaluate "$name" "$scored" --model "$RUNS/int8/${direction}_zoomwide_s0.safetensors" \
    --model "$RUNS/int8/${direction}_zoomwide_s1.safetensors" "${SHIPPED_PREDICT[@]}"
  rows+=("${direction:0:1} → ${scored}, fusion, zoom 0.5-1.4, ensemble of seeds 0 + 1, multi-scale, int8 weights=$OUT/$name/metrics.json")
  for seed in 0 1; do
    name=${direction}_base_s${seed}_multiscale_int8
    evaluate "$name" "$scored" --model "$RUNS/int8/${direction}_base_s${seed}.safetensors" "${SHIPPED_PREDICT[@]}"
    rows+=("${direction:0:1} → ${scored}, base, seed $seed, multi-scale, int8 weights=$OUT/$name/metrics.json")
  done
done
# Fourteen more changes to the default recipe, seed 0, run as shipped (multi-scale, threshold in the
# table's sweep): Lovász hinge instead of Dice ("lovasz"), training windows of 384 px instead
# of 256 (same pixels per epoch: batches of 4, 56 windows; "tile384"), AdamW weight decay 0.05
# instead of 0.0001 ("decay"), a wider or narrower network (width 20 or 12 instead of 16;
# "width20", "width12"), online hard example mining (BCE over the hardest 25 % of each batch's
# pixels) instead of BCE ("ohem"), random zoom down to 0.25 instead of 0.5 ("zoomwider", also
# scored with a third, quarter-side view), focal loss (alpha 0.5, gamma 2) instead of BCE
# ("focal"), a zoom-out that reads a wider window of the scene instead of padding the tile
# with ignored border ("zoomctx"), training for 15 epochs instead of 20 ("epochs15"), batches
# of 4 windows instead of 8 (twice the optimiser steps; "batch4"), a peak learning rate of 4e-3
# or 1e-3 instead of 2e-3 ("lr4e3", "lr1e3") and instance-batch norm (IBN-a: half the channels
# of the optical encoder's three finest levels normalised per window; "ibn"). And
# the default model's pair of seeds 0 + 1 (int8) with that third view, and on 1024 px windows.
for direction in B_score_A A_score_B; do
  scored=${direction: -1}
  for recipe in lovasz tile384 decay width20 ohem zoomwider focal zoomctx width12 epochs15 \
                batch4 lr4e3 lr1e3 ibn; do
    run=$RUNS/${direction}_${recipe}_s0
    [[ -f $run/summary.json ]] || train "$recipe" "$direction" 0 "$run"
    name=${direction}_${recipe}_s0_multiscale
    evaluate "$name" "$scored" --model "$run/model.safetensors" "${SHIPPED_PREDICT[@]}"
    rows+=("${direction:0:1} → ${scored}, $(label_of "$recipe"), seed 0, multi-scale=$OUT/$name/metrics.json")
  done
  evaluate "${direction}_zoomwider_s0_scales3" "$scored" \
    --model "$RUNS/${direction}_zoomwider_s0/model.safetensors" --tile 512 --overlap 128 --scales 1,0.5,0.25
  rows+=("${direction:0:1} → ${scored}, $(label_of zoomwider), seed 0, scales 1 + 0.5 + 0.25=$OUT/${direction}_zoomwider_s0_scales3/metrics.json")
  pair=(--model "$RUNS/int8/${direction}_zoomwide_s0.safetensors"
        --model "$RUNS/int8/${direction}_zoomwide_s1.safetensors")
  evaluate "${direction}_zoomwide_pair01_scales3_int8" "$scored" "${pair[@]}" \
    --tile 512 --overlap 128 --scales 1,0.5,0.25
  evaluate "${direction}_zoomwide_pair01_tile1024_int8" "$scored" "${pair[@]}" \
    --tile 1024 --overlap 256 --scales 1,0.5
  rows+=("${direction:0:1} → ${scored}, fusion, zoom 0.5-1.4, ensemble of seeds 0 + 1, scales 1 + 0.5 + 0.25, int8 weights=$OUT/${direction}_zoomwide_pair01_scales3_int8/metrics.json"
         "${direction:0:1} → ${scored}, fusion, zoom 0.5-1.4, ensemble of seeds 0 + 1, multi-scale on 1024 px windows, int8 weights=$OUT/${direction}_zoomwide_pair01_tile1024_int8/metrics.json")
done
# int4 weights, as the shipped fusion file stores them (slidemap export --weights int4: kernels
# of 2^18 weights or more in 4 bits, the rest int8): the default model's pair of seeds 0 + 1,
# multi-scale; and the same pair with every kernel in 4 bits (store_all_int4.py).
for direction in B_score_A A_score_B; do
  scored=${direction: -1}
  for seed in 0 1; do
    float=$RUNS/${direction}_zoomwide_s${seed}/model.safetensors
    [[ -f $RUNS/int4/${direction}_zoomwide_s${seed}.safetensors ]] || $SLIDEMAP export "$float" \
      --weights int4 --out "$RUNS/int4/${direction}_zoomwide_s${seed}" > /dev/null
    [[ -f $RUNS/int4all/${direction}_zoomwide_s${seed}.safetensors ]] || .venv/bin/python \
      benchmarks/cross_region/store_all_int4.py "$float" "$RUNS/int4all/${direction}_zoomwide_s${seed}"
  done
  for storage in int4 int4all; do
    evaluate "${direction}_zoomwide_pair01_multiscale_$storage" "$scored" \
      --model "$RUNS/$storage/${direction}_zoomwide_s0.safetensors" \
      --model "$RUNS/$storage/${direction}_zoomwide_s1.safetensors" "${SHIPPED_PREDICT[@]}"
  done
  rows+=("${direction:0:1} → ${scored}, fusion, zoom 0.5-1.4, ensemble of seeds 0 + 1, multi-scale, int4 weights=$OUT/${direction}_zoomwide_pair01_multiscale_int4/metrics.json"
         "${direction:0:1} → ${scored}, fusion, zoom 0.5-1.4, ensemble of seeds 0 + 1, multi-scale, every kernel 4-bit=$OUT/${direction}_zoomwide_pair01_multiscale_int4all/metrics.json")
done
.venv/bin/python benchmarks/cross_region/table.py "${rows[@]}"
