#!/usr/bin/env bash
# One-step setup: a fresh virtual environment in .venv with ganops, its pipeline tools and test tools.
# Usage: ./setup.sh          (CPU; on a CUDA machine pip takes torch's CUDA build)
#        ./setup.sh --gpu    (also onnxruntime-gpu, for serving on CUDA)
set -euo pipefail
cd "$(dirname "$0")"
extras="dev"
[[ "${1:-}" == "--gpu" ]] && extras="dev,gpu"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
if [[ "$extras" == *gpu* ]]; then
  # onnxruntime and onnxruntime-gpu ship the same module; keep only the GPU build.
  .venv/bin/python -m pip uninstall --quiet -y onnxruntime
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "onnxruntime-gpu>=1.18"
fi
echo "ganops is installed in .venv — run: source .venv/bin/activate && dvc repro"
