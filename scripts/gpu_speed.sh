#!/usr/bin/env bash
# The GPU speed run, ready before any GPU is (docs/gpu.md).
#
#   scripts/gpu_speed.sh --collect                 # here, with internet: wheels the GPU machine lacks -> gpu_wheels/
#   scripts/gpu_speed.sh --run --out DIR           # there, offline: install them, run eval.speed --preset gpu
#   scripts/gpu_speed.sh                           # both steps, in order
#   scripts/gpu_speed.sh --dry_run --out DIR       # the same steps on CPU with tiny shapes (no download)
#
# Options: --wheels DIR (default gpu_wheels), --out DIR (default results/speed/gpu), --budget SECONDS (eval.speed's
# time limit, default 480), --site DIR (where --run installs the wheels, default /tmp/gpu_site), --python EXE;
# anything after `--` goes to `python -m eval.speed` (e.g. -- --models flux-dev@L4 --attention_backend _flash_3).
# eval.speed writes speed.csv / speed.md / blocks.* / meta.json after every case, so when the budget runs out the
# finished cases stay (meta.json: "complete": false, "cases_done"), and this script still exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=gpu_wheels
OUT=results/speed/gpu
BUDGET=480
SITE=/tmp/gpu_site
PYTHON=${PYTHON:-python3}
DRY_RUN=0
DO_COLLECT=0
DO_RUN=0
EXTRA=()
# What the GPU image lacks for eval.speed (docs/gpu.md; its package list is in the device notes): diffusers at the
# version used here, importlib_metadata (a diffusers requirement), torch-fidelity (imported by bigain), and upstream
# tomesd 0.1.3 for the side-by-side column. Everything else (torch, transformers, accelerate, huggingface_hub >= 1.32,
# safetensors >= 0.8, numpy, pandas, matplotlib, scipy, pyyaml, tqdm, filelock) is already there.
PY_VERSION=3.12

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --collect) DO_COLLECT=1 ;;
    --run) DO_RUN=1 ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a folder"; WHEELS=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift ;;
    --site) [ $# -ge 2 ] || die "--site needs a folder"; SITE=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an executable"; PYTHON=$2; shift ;;
    --budget)
      [ $# -ge 2 ] || die "--budget needs a number of seconds"
      [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--budget must be a positive whole number of seconds, got '$2'"
      BUDGET=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown option '$1'; allowed: --collect --run --dry_run --wheels DIR --out DIR --budget SECONDS --site DIR --python EXE [-- eval.speed args]" ;;
  esac
  shift
done
if [ $DO_COLLECT = 0 ] && [ $DO_RUN = 0 ]; then DO_COLLECT=1; DO_RUN=1; fi
command -v "$PYTHON" >/dev/null || die "python '$PYTHON' not found (--python EXE)"

wheel_specs() {
  local diffusers_version
  diffusers_version=$("$PYTHON" -c "import diffusers; print(diffusers.__version__)")
  echo "diffusers==$diffusers_version importlib_metadata torch-fidelity tomesd==0.1.3"
}

collect() {
  local specs
  specs=$(wheel_specs)
  local cmd=("$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION"
             --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
             --platform manylinux2014_x86_64 --platform any -d "$WHEELS")
  if [ $DRY_RUN = 1 ]; then
    echo "[collect] dry run, nothing downloaded; would run: ${cmd[*]} $specs"
    return
  fi
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "${cmd[@]}" $specs
  echo "[collect] $(ls "$WHEELS"/*.whl | wc -l) wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry it to the GPU machine"
}

install_wheels() {
  local target=$1
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$WHEELS"/*.whl
}

run() {
  if [ $DRY_RUN = 1 ]; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
      local check
      check=$(mktemp -d)
      install_wheels "$check"
      echo "[run] dry run: the wheels in $WHEELS install offline (checked in $check, not used)"
      rm -rf "$check"
    else
      echo "[run] dry run: no wheels in $WHEELS, install step skipped"
    fi
  else
    compgen -G "$WHEELS/*.whl" >/dev/null || die "no wheels in $WHEELS: run --collect where pip reaches PyPI, then carry $WHEELS"
    install_wheels "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    local upstream
    upstream=$(compgen -G "$WHEELS/tomesd-0.1.3-*.whl" | head -n1 || true)
    if [ -n "$upstream" ]; then
      "$PYTHON" -c "import sys; from eval.speed.upstream import install_upstream; install_upstream(wheel=sys.argv[1])" "$upstream"
    fi
    "$PYTHON" -c "import diffusers, torch; print(f'[run] diffusers {diffusers.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
  fi
  local preset=(--preset gpu)
  [ $DRY_RUN = 1 ] && preset=(--preset gpu-tiny)
  mkdir -p "$OUT"
  echo "[run] python -m eval.speed ${preset[*]} --out $OUT ${EXTRA[*]:-} (budget ${BUDGET} s)"
  local rc=0
  PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=30 "$BUDGET" \
    "$PYTHON" -m eval.speed "${preset[@]}" --out "$OUT" ${EXTRA[@]+"${EXTRA[@]}"} || rc=$?
  if [ $rc = 124 ] || [ $rc = 130 ] || [ $rc = 137 ]; then
    echo "[run] time budget (${BUDGET} s) reached: the finished cases are in $OUT (meta.json cases_done)"
    return 0
  fi
  [ $rc = 0 ] || { echo "[run] eval.speed failed (exit $rc); finished cases, if any, are in $OUT" >&2; return $rc; }
  echo "[run] done: $OUT/speed.md"
}

[ $DO_COLLECT = 1 ] && collect
[ $DO_RUN = 1 ] && run
exit 0
