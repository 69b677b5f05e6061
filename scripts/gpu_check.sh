#!/usr/bin/env bash
# The one-call GPU check (the package benchmarks/gpu_check): scoring speed (release loop vs scorer, 7B-shaped MFU),
# LoRA / QLoRA training, the recipe's DeepSpeed ZeRO-3 path (score -> select -> train -> resume) and evaluation,
# each step under its own time limit, about 5 minutes on one H100 / H200; one report at the end.
#
#   scripts/gpu_check.sh --prepare               # here, with network: wheels into .whl/, assets into .gpu_check/
#   scripts/gpu_check.sh [--out DIR]             # on the GPU machine, with .whl/ and .gpu_check/ beside the code
#   scripts/gpu_check.sh --dry-run --out DIR     # every step on the CPU with tiny shapes (CI runs this)
#
# The GPU machine has torch, transformers, peft and accelerate but no network; trl, datasets, bitsandbytes and
# DeepSpeed (plus what they need that it lacks) travel as the files --prepare downloads, listed in
# scripts/gpu_wheels.txt. They are installed into a scratch folder, never over the machine's own packages;
# DeepSpeed (an sdist) builds there in the background while the scoring steps run.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/benchmarks
ASSETS=$REPO/.gpu_check
WHEELS=$REPO/.whl
DRY=0
PREPARE=0
STEPS=""
ASSETS_GIVEN=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    --out) OUT=$2; shift ;;
    --assets) ASSETS=$2; ASSETS_GIVEN=1; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$REPO/src:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [ $PREPARE = 1 ]; then
  set -e
  mkdir -p "$WHEELS"
  # pure-Python wheels and manylinux x86-64 builds for the GPU machine's Python 3.12
  grep -v '^#' "$REPO/scripts/gpu_wheels.txt" | grep -v '^deepspeed' | xargs "$PY" -m pip download -q --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS"
  grep '^deepspeed' "$REPO/scripts/gpu_wheels.txt" | xargs "$PY" -m pip download -q --no-deps --no-binary=:all: \
    -d "$WHEELS"
  "$PY" -m gpu_check prepare --assets "$ASSETS"
  du -sh "$WHEELS" "$ASSETS"
  exit 0
fi

mkdir -p "$OUT"
# the students and their checkpoints need GBs: scratch space, not the code's folder
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/srt_gpu_check_work}
[ $DRY = 1 ] && WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK/logs"
# the dry run builds its own assets from $SRT_SHARED_DATA (default: the tree's tests/data), never reusing a prepared .gpu_check/
# made from other data, so its result depends on the tree alone (and the preparation is checked too)
if [ $DRY = 1 ] && [ $ASSETS_GIVEN = 0 ]; then
  ASSETS=$WORK/assets
  export SRT_SHARED_DATA=${SRT_SHARED_DATA:-$REPO/tests/data}
  "$PY" -m gpu_check prepare --assets "$ASSETS" || exit 1
fi
if [ $DRY = 0 ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=${GPU_CHECK_SITE:-/tmp/srt_gpu_check_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$SITE:$PYTHONPATH" PATH="$SITE/bin:$PATH"
  if ls "$WHEELS"/deepspeed-*.tar.gz >/dev/null 2>&1; then
    touch "$WORK/deepspeed_install.pending"
    ( DS_BUILD_OPS=0 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/deepspeed-*.tar.gz >"$WORK/logs/deepspeed_install.log" 2>&1
      echo $? >"$WORK/deepspeed_install.rc" ) &
  fi
fi
ARGS=(run --assets "$ASSETS" --out "$OUT" --work "$WORK")
[ $DRY = 1 ] && ARGS+=(--dry-run)
[ -n "$STEPS" ] && ARGS+=(--steps "$STEPS")
"$PY" -m gpu_check "${ARGS[@]}"
