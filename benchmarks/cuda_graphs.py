"""The CUDA-graph training step against the same step run eagerly, on a GPU.

For each configuration (the benchmark's minimax DCGAN; the CIFAR recipe's conditional hinge loss
with spectral norm and two D steps; R1; WGAN-GP) the same seeded steps are trained three times —
eagerly twice (the GPU's own run-to-run noise: cuDNN autotuning, bf16 atomics) and once replaying
the captured graph — and the final EMA generators and logged losses are compared. Prints one line
per configuration and ``cuda_graph_parity=ok|FAILED``; writes $OUT/cuda_graphs.json.

    python benchmarks/cuda_graphs.py [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from _generator import write_random_prepared
from ganops.config import validate_params
from ganops.training import train

CONFIGS = {
    "minimax": {"model": {"conditional": False, "spectral_norm": False}, "train": {"loss": "minimax"}},
    "hinge_sn_cond_d2": {"model": {"conditional": True, "spectral_norm": True}, "train": {"loss": "hinge", "d_steps": 2}},
    "r1": {"model": {"conditional": True, "spectral_norm": True}, "train": {"loss": "minimax", "r1_gamma": 1.0}},
    "wgan_gp": {"model": {"conditional": False, "spectral_norm": False}, "train": {"loss": "wgan-gp", "d_steps": 2}},
}
TOLERANCE = 2e-2  # relative weight difference after the run; a broken capture is off by O(1)


def run(root: Path, config: dict, steps: int, graphs: bool) -> tuple[dict, list[dict]]:
    for checkpoint in (root / "models" / "checkpoints").glob("*.pt"):
        checkpoint.unlink()
    raw = {
        "model": {"latent_dim": 64, "g_channels": 32, "d_channels": 32, **config["model"]},
        "train": {"steps": steps, "batch_size": 64, "device": "cuda", "cuda_graphs": graphs, "checkpoint_every": 10**9,
                  "log_every": 1, **config["train"]},
        "mlflow": {"enabled": False},
    }
    summary = train(validate_params(raw), root)
    weights = load_file(root / "models" / "generator.safetensors")
    rows = list(csv_rows(root / "reports" / "train_log.csv"))
    return {"summary": summary, "weights": weights}, rows


def csv_rows(path: Path):
    import csv

    with open(path) as handle:
        yield from csv.DictReader(handle)


def relative_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for name, tensor in a.items():
        if tensor.is_floating_point():
            scale = float(tensor.abs().max()) or 1.0
            worst = max(worst, float((tensor - b[name]).abs().max()) / scale)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs one", file=sys.stderr)
        return 2
    out = Path(os.environ.get("OUT", "."))
    images = np.random.default_rng(0).integers(0, 256, (2048, 3, 32, 32), dtype=np.uint8)
    results, ok = {}, True
    for name, config in CONFIGS.items():
        root = Path(tempfile.mkdtemp(prefix=f"ganops-graphs-{name}-"))
        write_random_prepared(root, images, num_classes=10)
        try:
            eager_a, rows_a = run(root, config, args.steps, graphs=False)
            eager_b, _ = run(root, config, args.steps, graphs=False)
            graph, rows_g = run(root, config, args.steps, graphs=True)
            floor = relative_difference(eager_a["weights"], eager_b["weights"])
            diff = relative_difference(eager_a["weights"], graph["weights"])
            loss_gap = max(abs(float(a["loss_d"]) - float(g["loss_d"])) for a, g in zip(rows_a, rows_g))
            passed = bool(diff <= max(TOLERANCE, 4 * floor) and np.isfinite(float(rows_g[-1]["loss_d"])))
            results[name] = {"eager_vs_eager": floor, "graph_vs_eager": diff, "max_loss_d_gap": loss_gap,
                             "passed": passed, "loss_d_graph": [float(r["loss_d"]) for r in rows_g]}
            print(f"{name:18s} weights: graph vs eager {diff:.2e} (eager vs eager {floor:.2e}); "
                  f"max loss_d gap {loss_gap:.2e}; {'ok' if passed else 'FAILED'}", flush=True)
        except Exception:  # one configuration failing must not hide the others' results
            passed = False
            results[name] = {"passed": False, "error": traceback.format_exc()}
            print(f"{name:18s} FAILED\n{results[name]['error']}", flush=True)
        ok = ok and passed
        (out / "cuda_graphs.json").write_text(json.dumps(results, indent=2))
    print(f"cuda_graph_parity={'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
