#!/usr/bin/env bash
# Regenerate the offline testbed tables of docs/reproduce.md: the joint benchmark on the shipped
# models (classification, generation + domain metrics, timing), then paper-style tables and plots.
# Resumable: rerunning reuses finished images and samples. Extra flags go to bigain.benchmark
# (e.g. --full, --sweep, --threads 1).
set -eo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BENCH=${BENCH:-outputs/benchmark}
OUT=${OUT:-reports/testbed}

$PY -m bigain.benchmark --out "$BENCH" "$@"
$PY -m eval.report "$BENCH/classify" "$BENCH/generate" --out "$OUT"
