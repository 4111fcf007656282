#!/usr/bin/env bash
# The prepared GPU check: train_throughput.py and sampling_throughput.py on one CUDA GPU (an
# H100-class card: about 2 minutes of work, at most 8 with the time limits below), then one
# table (benchmarks/summary.py) with the device name and the targets of docs/performance.md.
#
#   bash benchmarks/gpu_check.sh [WHEELS]      # or DMATTACK_WHEELS=WHEELS
#
# Python packages the GPU image lacks (diffusers, torchattacks) are installed from the local
# wheel folder WHEELS with pip --no-index --find-links into $DMATTACK_SITE (default
# /tmp/dmattack-site); dmattack itself runs from this checkout. Make the folder where pip
# reaches the index (the wheels are pure Python):
#   pip download --no-deps -d WHEELS diffusers==0.42.1 torchattacks==3.5.1
# Settings: PYTHON (python3), DEVICE (cuda), RESULTS (folder for the JSON files: $OUT or a
# temp folder), COMPILE=1 (also torch.compile dmattack's model; adds minutes of compilation),
# and for a quick try elsewhere PRESET (ddpm-cifar10), BATCH (128), WARMUP (10), STEPS (30),
# SAMPLES (256).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${1:-${DMATTACK_WHEELS:-}}
SITE=${DMATTACK_SITE:-/tmp/dmattack-site}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-${OUT:-$(mktemp -d)}}
mkdir -p "$RESULTS"

missing=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("diffusers", "torchattacks") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  if [ -z "$WHEELS" ]; then
    echo "error: $missing not installed; give a wheel folder: bash $0 WHEELS" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile \
    --upgrade --target "$SITE" $missing
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PRESET=${PRESET:-ddpm-cifar10}
compile=""
[ "${COMPILE:-0}" = 1 ] && compile=--compile

# ddpm-cifar10 (35.7M parameters), batch 128: 10 warm-up + 30 timed steps per job
timeout 300 "$PY" benchmarks/train_throughput.py --device "$DEVICE" --preset "$PRESET" \
  --batch-size "${BATCH:-128}" --warmup "${WARMUP:-10}" --steps "${STEPS:-30}" $compile \
  --json "$RESULTS/train.json"
# 256 samples, 10 respaced steps, every step attacked (FGSM, PGD-20), one warm-up pass
timeout 150 "$PY" benchmarks/sampling_throughput.py --device "$DEVICE" --preset "$PRESET" \
  --num-samples "${SAMPLES:-256}" --sampler-steps 10 --json "$RESULTS/sampling.json"
echo
"$PY" benchmarks/summary.py "$RESULTS/train.json" "$RESULTS/sampling.json"
