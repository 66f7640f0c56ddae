#!/usr/bin/env bash
# Every GPU check the project owes, in one prepared step on a lent CUDA machine, within 8 minutes.
# Here first: benchmarks/gpu_wheels.sh (the wheels the device's image lacks, into .whl/). Then, as
# the device tool's one run, with carry [".whl"]:   bash benchmarks/gpu_suite.sh
# Writes $OUT/gpu_suite.txt (the summary: each check's last line, exit status and seconds) and
# $OUT/gpu_suite.tar.gz (every check's full output and JSON); record both in benchmarks/RESULTS.md
# with the machine card each log starts with.
#
# What it cannot do there, and says so in the summary: the pinned torch (the device's image has its
# own; its CUDA wheel is far over the 64 MiB a call may carry), onnxruntime-gpu (likewise: the
# CUDA provider's parity runs only where the image has the provider), and Inception features on CUDA
# against torch-fidelity unless the FID weights are there (87 MB, over the carry limit; point
# GANOPS_CACHE at a folder that holds them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_suite_out}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_suite.XXXX)
SUMMARY="$OUT/gpu_suite.txt"
mkdir -p "$OUT"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "wheels from .whl failed to install"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OUT="$WORK"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  say "no CUDA device visible to $PY: nothing run"; exit 2
fi
say "torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)') (pinned: 2.14.1; see the header)"
say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"

# check NAME SECONDS COMMAND...: runs it under a time limit, keeps its log, summarises its last line.
check() {
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  say "$name: rc=$rc in $((SECONDS - started)) s (limit $limit); $(grep -v '^\s*$' "$WORK/$name.log" | tail -1)"
}

check train_step   150 "$PY" benchmarks/train_step.py --rounds 3
check cuda_graphs   75 "$PY" benchmarks/cuda_graphs.py --steps 12
check gpu_check    120 "$PY" benchmarks/gpu_check.py --steps 600 --compare-steps 120
check streamed_gpu  45 "$PY" benchmarks/streamed_gpu.py --steps 200
if "$PY" -c "import sys; from ganops.metrics.inception import default_weights_path as p; sys.exit(0 if p().is_file() else 1)"; then
  check inception_cuda 45 "$PY" benchmarks/inception.py --device cuda --images 1000 --rounds 3
else
  say "inception_cuda: skipped: the FID Inception weights are not on this machine (87 MB, over the carry limit)"
fi
"$PY" -c "import onnxruntime as o; print('onnxruntime providers:', ', '.join(o.get_available_providers()))" 2>&1 \
  | tee -a "$SUMMARY"
check recipe_time   90 "$PY" benchmarks/recipe_time.py --steps 400 --rounds 3
tar -czf "$OUT/gpu_suite.tar.gz" -C "$WORK" .
say "total: $SECONDS s"
