#!/usr/bin/env bash
# Here (not on the device): the wheels gpu_suite.sh needs that the device's image lacks, into .whl/
# (git-ignored through .git/info/exclude), for its Python 3.12. Versions are the ones this venv runs.
# The device cannot take the pinned torch (its CUDA wheel is far over the 64 MiB a call may carry),
# onnxruntime-gpu (likewise) or the 87 MB FID Inception weights: gpu_suite.sh says so when it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir .whl
for name in pydantic pydantic_core annotated-types typing-inspection pyspng pydot torch-fidelity pytorch-fid mlxtend; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$(version "$name")"
done
du -sh .whl
