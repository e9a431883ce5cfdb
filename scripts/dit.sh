#!/usr/bin/env bash
# Zero-shot classification with DiT-XL/2-512 (class-conditional, 512 px) under token reduction (docs/protocol.md §1, §5).
#
# Edit the configuration block (or set its variables in the environment), then keep exactly one
# example block uncommented (Baseline is active). Every flag is documented by
#   python -m bigain.classify --help
# The ratio / df / alpha a block sets is the value that runs. Runs resume: rerunning skips images
# that already have a record. Multi-GPU: LAUNCH="accelerate launch --multi_gpu --num_processes 4"
# (or "torchrun --nproc_per_node 4"); independent jobs: EXTRA_ARGS="--n_workers 8 --worker_idx K",
# then the same command with --merge_only for the final accuracy.
set -eo pipefail  # no -u: bash 3.2 (macOS) treats an empty "${EXTRA[@]}" as unbound
cd "$(dirname "$0")/.."

# ----------------------------------------------------------------------------- configuration
PY=${PYTHON:-python}
LAUNCH=${LAUNCH:-$PY}                        # or "accelerate launch --multi_gpu --num_processes N"
DATASET=${DATASET:-imagenet100}              # imagenet100 or imagenet (DiT knows the ImageNet-1k classes); fmnist for the testbed DiT
DATASET_ROOT=${DATASET_ROOT:-}               # datasets live under $DATASET_ROOT (docs/protocol.md §4)
VERSION=${VERSION:-dit-512}                  # dit-512 = facebook/DiT-XL-2-512; also dit-256 (IMG_SIZE=256)
MODEL_PATH=${MODEL_PATH:-}                   # local diffusers folder (e.g. bigain/assets/testbed/dit-fmnist); overrides VERSION
IMG_SIZE=${IMG_SIZE:-512}
DTYPE=${DTYPE:-fp16}                         # fp16 on GPU as published; fp32 on CPU
BATCH_SIZE=${BATCH_SIZE:-32}
N_SAMPLES=${N_SAMPLES:-"5 20"}               # timesteps scored by the end of each stage
TO_KEEP=${TO_KEEP:-"5 1"}                    # classes kept after each stage (last = 1)
SEED=${SEED:-0}
OUTPUT_DIR=${OUTPUT_DIR:-results/classification}
EXTRA_ARGS=${EXTRA_ARGS:-}                   # e.g. "--max_images 500" or "--n_workers 4 --worker_idx 0"

COMMON=(--dataset "$DATASET" --version "$VERSION" --img_size "$IMG_SIZE" --dtype "$DTYPE"
        --batch_size "$BATCH_SIZE" --n_samples $N_SAMPLES --to_keep $TO_KEEP --seed "$SEED"
        --output_dir "$OUTPUT_DIR")
if [[ -n "$MODEL_PATH" ]]; then COMMON+=(--model_path "$MODEL_PATH"); fi
if [[ -n "$DATASET_ROOT" ]]; then COMMON+=(--dataset_root "$DATASET_ROOT"); fi
read -r -a EXTRA <<< "$EXTRA_ARGS"
read -r -a RUN <<< "$LAUNCH"
RUN+=(-m bigain.classify)

# ----------------------------------------------------------------------------- 1. Baseline (no token reduction)
"${RUN[@]}" "${COMMON[@]}" --method none "${EXTRA[@]}"

# ----------------------------------------------------------------------------- 2. ToMe: merge 70% of tokens
# "${RUN[@]}" "${COMMON[@]}" --method tome --ratio 0.7 "${EXTRA[@]}"

# ----------------------------------------------------------------------------- 3. BiGain_TM: merge 70%, Laplacian (l1) lowest-score destinations
# "${RUN[@]}" "${COMMON[@]}" --method bigain_tm --ratio 0.7 --laplacian_norm l1 "${EXTRA[@]}"

# ----------------------------------------------------------------------------- 4. ToDo: nearest K/V downsampling, df 2
# "${RUN[@]}" "${COMMON[@]}" --method todo --df 2 --mode nearest-exact "${EXTRA[@]}"

# ----------------------------------------------------------------------------- 5. BiGain_TD: interpolate-extrapolate K/V downsampling, alpha 0.5, df 2
# "${RUN[@]}" "${COMMON[@]}" --method bigain_td --df 2 --alpha 0.5 "${EXTRA[@]}"

# ----------------------------------------------------------------------------- 6. SiTo: prune 70% of tokens
# "${RUN[@]}" "${COMMON[@]}" --method sito --ratio 0.7 "${EXTRA[@]}"
