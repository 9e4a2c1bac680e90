#!/usr/bin/env bash
# The labelling loop measured on Jinsha region B as a "new site" (README.md here): a region-A
# RGB model suggests boxes of region B's northern half; k of them are "labelled" (region B's
# landslide polygons, in WGS 84, with the k boxes as area of interest), the model is fine-tuned
# on them and scored on region B's southern half (never labelled). Against k boxes drawn at
# random from the same candidates. k in {2, 4}, fine-tuning seeds 0 and 1 (the random draw
# uses the same seed). A third arm runs the loop twice for k = 4 ("loop"): the two boxes of
# "suggested" k = 2, then the two boxes that the model fine-tuned on them suggests next; the
# start model is fine-tuned on all four. Run from the repository root; everything goes to
# runs/active/.
set -euo pipefail
B=../shared/data/jinsha/region_B_image.tif
OUT=runs/active
PY=.venv/bin/python
SM=.venv/bin/slidemap
mkdir -p $OUT
[ -f $OUT/m0/model.safetensors ] || nice -n 10 $SM train benchmarks/active_labels/m0.yaml --out $OUT/m0
[ -f $OUT/B_slides.gpkg ] || $PY benchmarks/active_labels/prepare.py polygons
# every candidate box of the northern half (boxes touching the southern half are skipped), and
# the four most worth labelling
[ -f $OUT/candidates.gpkg ] || nice -n 10 $SM suggest $OUT/m0/model.safetensors $B --box 256 \
  --n 1000 --spacing 0 --labels $OUT/B_south.gpkg --out $OUT/candidates.gpkg
[ -f $OUT/suggested.gpkg ] || nice -n 10 $SM suggest $OUT/m0/model.safetensors $B --box 256 \
  --n 4 --labels $OUT/B_south.gpkg --out $OUT/suggested.gpkg
for k in 2 4; do
  for seed in 0 1; do
    $PY benchmarks/active_labels/prepare.py boxes $k $seed
    for arm in suggested random; do
      name=${arm}_k${k}_s${seed}
      [ -f $OUT/$name/finetune.json ] && continue
      sed "s/ARM/$name/; s/SEED/$seed/" benchmarks/active_labels/finetune.yaml.in \
        > $OUT/$name.yaml
      start=$(date +%s)
      nice -n 10 $SM finetune $OUT/m0/model.safetensors $OUT/$name.yaml --out $OUT/$name
      echo "$name $(( $(date +%s) - start )) s" >> $OUT/seconds.txt
    done
  done
done
for seed in 0 1; do
  name=loop_k4_s${seed}
  [ -f $OUT/$name/finetune.json ] && continue
  start=$(date +%s)
  [ -f $OUT/round2_s${seed}.gpkg ] || nice -n 10 $SM suggest \
    $OUT/suggested_k2_s${seed}/model.safetensors $B --box 256 --n 2 --labels $OUT/B_south.gpkg \
    --labels $OUT/boxes_suggested_k2_s${seed}.gpkg --out $OUT/round2_s${seed}.gpkg
  $PY benchmarks/active_labels/prepare.py loop $seed
  sed "s/ARM/$name/; s/SEED/$seed/" benchmarks/active_labels/finetune.yaml.in > $OUT/$name.yaml
  nice -n 10 $SM finetune $OUT/m0/model.safetensors $OUT/$name.yaml --out $OUT/$name
  echo "$name $(( $(date +%s) - start )) s (with its suggest)" >> $OUT/seconds.txt
done
$PY benchmarks/active_labels/table.py
