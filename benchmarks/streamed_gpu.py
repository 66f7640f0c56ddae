"""The streamed-shard training path on a GPU: the same seeded CUDA training run twice, once with the
split held (train.in_memory_max_mb at its default: the images on the GPU) and once read from its
shards a batch at a time (in_memory_max_mb 0: disk -> pinned host buffer -> GPU each step). The two
must train on the same batches, so with deterministic kernels their final weights agree within the
eager-vs-eager floor of two held runs (measured here too); images/s of both are printed. A check,
not a peer comparison.

    python benchmarks/streamed_gpu.py [--steps 200]

Last line: ``streamed_vs_held_images_per_s=<ratio>``; exit 1 when the streamed run's weights differ
from the held run's by more than cuda_graphs.derived_bound of the held-vs-held floor (FLOOR_FACTOR
times it, at least MIN_BOUND).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts

# isort: off
import ganops  # noqa: F401  (before torch, as under the ganops CLI)
# isort: on

import numpy as np
import torch

from _common import print_environment
from _generator import write_random_prepared
from cuda_graphs import checkpoint_weights, derived_bound, relative_difference
from ganops.config import validate_params
from ganops.stages.train import train


def run(images: np.ndarray, steps: int, in_memory_max_mb: float) -> tuple[dict, dict]:
    root = Path(tempfile.mkdtemp(prefix="ganops-streamed-"))
    write_random_prepared(root, images, num_classes=10)
    params = validate_params({
        "model": {"latent_dim": 64, "g_channels": 32, "d_channels": 32, "conditional": True, "spectral_norm": True},
        "train": {"steps": steps, "batch_size": 64, "device": "cuda", "cuda_graphs": False, "checkpoint_every": steps,
                  "log_every": max(1, steps // 4), "eval_every": 0, "in_memory_max_mb": in_memory_max_mb},
        "mlflow": {"enabled": False},
    })
    return train(params, root), checkpoint_weights(root, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs one", file=sys.stderr)
        return 2
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    machine = print_environment(())
    images = np.random.default_rng(0).integers(0, 256, (4096, 3, 32, 32), dtype=np.uint8)
    held_a, weights_a = run(images, args.steps, 2048.0)
    held_b, weights_b = run(images, args.steps, 2048.0)
    streamed, weights_s = run(images, args.steps, 0.0)
    floor, diff = relative_difference(weights_a, weights_b), relative_difference(weights_a, weights_s)
    bound = derived_bound(floor)
    ok = diff <= bound and all(np.isfinite(s["loss_d"]) for s in (held_a, streamed))
    print(f"held: {held_a['images_per_s']:.0f} and {held_b['images_per_s']:.0f} images/s; streamed from shards: "
          f"{streamed['images_per_s']:.0f} images/s ({args.steps} steps, batch 64, 32x32)")
    print(f"weights: held vs held {floor:.2e}; streamed vs held {diff:.2e} (bound {bound:.2e}); {'ok' if ok else 'FAILED'}")
    machine.finish()
    print(f"streamed_vs_held_images_per_s={streamed['images_per_s'] / held_a['images_per_s']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
