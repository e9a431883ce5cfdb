#!/usr/bin/env bash
# Regenerate the offline testbed tables of docs/reproduce.md: both sweeps, then the report.
# Resumable: rerunning skips finished runs and images.
set -eo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-reports/testbed}

$PY -m bigain.sweep configs/sweeps/testbed.yaml "$@"
$PY -m bigain.sweep configs/sweeps/testbed_generation.yaml "$@"
# domain FID + class consistency for every generated run (cached next to its images)
for run in runs/testbed/generate/*/*/*/; do
  if [[ -d "$run/images" && ! -f "$run/metrics.json" ]]; then
    $PY -m eval.metrics --gen "$run/images" --ref fmnist-test --metrics domain_fid class_consistency \
      --domain_extractor fmnist-reference --out "$run/metrics.json"
  fi
done
$PY -m eval.report runs/testbed --out "$OUT"
