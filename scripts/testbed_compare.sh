#!/usr/bin/env bash
# The comparison run of docs/reproduce.md ("Does the testbed separate the methods?"), in resumable stages
# that each extend the previous ones (records are per image, so a stage never redoes finished work):
#   1. DiT: baseline, the two headline pairs (ToMe/BiGain_TM r=0.7, ToDo/BiGain_TD df=2) and the compression
#      sweep (ToMe r=0.1-0.75, ToDo df=2/3/4) on the first 100 test images, 100 samples (10 per class)
#   2. U-Net with max_downsample=2 (both transformer levels reduced): baseline, ToMe r=0.7, ToDo df=2, 100 images
#   3. DiT headline pairs extended to N3 images (default 300)
# then the statistics (intervals, paired tests, pictures) over everything finished. One thread; every stage
# prints its wall time. Extra flags go to every bigain.benchmark call.
set -eo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-outputs/compare}
N1=${N1:-100}
N3=${N3:-300}
COMMON=(--threads 1 --images_per_class 10 --out "$OUT")
stage() {  # name, then benchmark flags
  local name=$1; shift
  local t0=$SECONDS
  echo "=== stage $name started $(date -u +%H:%M:%S) UTC"
  $PY -m bigain.benchmark "${COMMON[@]}" "$@"
  cp "$OUT/benchmark.md" "$OUT/stage_$name.md"
  echo "=== stage $name done in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
}
stage 1-dit-sweep --models dit --settings headline compression --n_images "$N1" "$@"
stage 2-unet-md2 --models unet --settings headline --methods tome todo --unet_max_downsample 2 --n_images "$N1" "$@"
stage 3-dit-headline --models dit --settings headline --n_images "$N3" "$@"
