#!/usr/bin/env bash
# The comparison run of docs/reproduce.md ("Does the testbed separate the methods?"), in resumable stages.
# Records are per image, so a stage never redoes finished work and a later stage extends an earlier one:
#   1. DiT: baseline and the two headline pairs (ToMe/BiGain_TM r=0.7, ToDo/BiGain_TD df=2), first N1 test images
#   2. DiT: compression sweep (ToMe r=0.1-0.75, ToDo df=2/3/4), first N2 images (the shared settings reuse stage 1)
#   3. U-Net with max_downsample=2 (both transformer levels reduced): baseline, ToMe r=0.7, ToDo df=2, N2 images
#   4. DiT headline pairs extended to N3 images
# Each stage writes its own table (stage_<name>.md) and prints its wall time; all use one thread and
# 100 generated samples per setting (10 per class). Extra flags go to every bigain.benchmark call.
set -eo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-outputs/compare}
N1=${N1:-100}
N2=${N2:-50}
N3=${N3:-200}
COMMON=(--threads 1 --images_per_class 10 --out "$OUT")
stage() {  # name, then benchmark flags
  local name=$1; shift
  local t0=$SECONDS
  echo "=== stage $name started $(date -u +%H:%M:%S) UTC"
  $PY -m bigain.benchmark "${COMMON[@]}" "$@"
  local models=" $* "
  for f in benchmark.md benchmark.csv tradeoffs.png compression.png per_class_*.png samples_*.png; do
    for g in "$OUT"/$f; do
      local model=${g##*_}; model=${model%.png}
      case "$f" in per_class_*|samples_*) [[ $models == *" $model "* ]] || continue;; esac
      [ -f "$g" ] && cp "$g" "$OUT/stage_${name}_$(basename "$g")"
    done
  done
  echo "=== stage $name done in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
}
stage 1-dit-headline --models dit --settings headline --n_images "$N1" "$@"
stage 2-dit-compression --models dit --settings compression --n_images "$N2" "$@"
stage 3-unet-md2 --models unet --settings headline --methods tome todo --unet_max_downsample 2 --n_images "$N2" "$@"
stage 4-dit-headline --models dit --settings headline --n_images "$N3" "$@"
