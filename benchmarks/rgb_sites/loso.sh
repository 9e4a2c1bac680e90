#!/usr/bin/env bash
# Train the four leave-one-site-out models of one RGB recipe with one seed, two trainings at a
# time (one torch thread each), then score each on the site it never saw (score_loso.py).
# A site whose model is already there is not trained again, so an interrupted sweep continues.
#
# Usage (repository root): bash benchmarks/rgb_sites/loso.sh RECIPE SEED
#   RECIPE: base (the shipped recipe), scene_norm, colour_random, wide_zoom, long,
#   landslide_windows or domain_batches; models in runs/rgb-loso-RECIPE-sSEED/SITE/, training logs beside them,
#   the table on stdout.
set -euo pipefail
recipe=$1
seed=$2
out=runs/rgb-loso-$recipe-s$seed
if [ "$recipe" = base ]; then tag=""; else tag="-$recipe"; fi
mkdir -p "$out"
train_site() {
  site=$1
  [ -f "$out/$site/model.safetensors" ] && return 0
  OMP_NUM_THREADS=1 /usr/bin/time -o "$out/$site.time" -v .venv/bin/slidemap -q train \
    "benchmarks/rgb_sites/loso$tag-$site.yaml" --seed "$seed" --out "$out/$site" --overwrite \
    > "$out/$site.log" 2>&1
}
export -f train_site
export out tag seed
printf '%s\n' nepal bijie sichuan jinsha | xargs -P 2 -I{} bash -c 'train_site {}'
.venv/bin/python benchmarks/rgb_sites/score_loso.py "$out" --recipe "$recipe"
