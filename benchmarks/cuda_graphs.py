"""The CUDA-graph training step against the same step run eagerly, on a GPU.

For each configuration (the benchmark's minimax DCGAN; the CIFAR recipe's conditional hinge loss
with spectral norm and two D steps; R1; WGAN-GP) the same seeded steps are trained four times:
eagerly twice (the GPU's own run-to-run noise: cuDNN autotuning, bf16 atomics), once eagerly with a
deliberately broken step (one discriminator update skipped halfway: what a broken capture looks
like), and once replaying the captured graph. Compared: the raw generator and discriminator weights
of the final checkpoint (not the EMA generator, which after a few steps is still mostly its
initialisation and would hide a broken step), as the largest relative difference of any tensor.

The bound comes from the measurement, per configuration: FLOOR_FACTOR times the eager-vs-eager
floor (at least MIN_BOUND, for a floor of exactly 0). The graph passes when it is within that bound of
the eager run, and the check counts only if the broken run is outside it (so a broken capture could
not pass); when the floor is so high that the broken run hides in it, the configuration fails and says
so (fewer --steps lower the floor). The runs use deterministic kernels (cuDNN's deterministic
algorithms, no atomics where PyTorch has a deterministic kernel, cuBLAS' fixed workspace), which is
what brings the floor down: the last GPU run without them had floors of 0.16 (R1) and 0.05 (WGAN-GP).
With ``--device cpu`` (no CUDA) the graph run is skipped and the eager-vs-broken control alone is
measured. Prints one line per configuration and ``cuda_graph_parity=ok|FAILED``; writes
$OUT/cuda_graphs.json.

    python benchmarks/cuda_graphs.py [--steps 12] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

from _common import print_environment
from _generator import write_random_prepared
from ganops.config import validate_params
from ganops.stages.train import train
from ganops.training.step import TrainStep

CONFIGS = {
    "minimax": {"model": {"conditional": False, "spectral_norm": False}, "train": {"loss": "minimax"}},
    "hinge_sn_cond_d2": {"model": {"conditional": True, "spectral_norm": True}, "train": {"loss": "hinge", "d_steps": 2}},
    "r1": {"model": {"conditional": True, "spectral_norm": True}, "train": {"loss": "minimax", "r1_gamma": 1.0}},
    "wgan_gp": {"model": {"conditional": False, "spectral_norm": False}, "train": {"loss": "wgan-gp", "d_steps": 2}},
}
FLOOR_FACTOR = 3.0  # the bound: this many times the eager-vs-eager floor ...
MIN_BOUND = 1e-6  # ... and at least this (relative difference of the largest-differing raw weight tensor)


def run(root: Path, config: dict, steps: int, graphs: bool, device: str = "cuda",
        skip_d_update_at: int | None = None) -> tuple[dict, list[dict]]:
    for checkpoint in (root / "models" / "checkpoints").rglob("*.pt"):  # every setup's folder
        checkpoint.unlink()
    raw = {
        "model": {"latent_dim": 64, "g_channels": 32, "d_channels": 32, **config["model"]},
        "train": {"steps": steps, "batch_size": 64, "device": device, "cuda_graphs": graphs, "checkpoint_every": 10**9,
                  "log_every": 1, "eval_every": 0, **config["train"]},
        "mlflow": {"enabled": False},
    }
    original = TrainStep._step
    calls = {"n": 0}

    def skipping(self):  # the broken control: one discriminator update does not happen
        calls["n"] += 1
        if calls["n"] != skip_d_update_at:
            return original(self)
        step = self.opt_d.step
        self.opt_d.step = lambda *args, **kwargs: None
        try:
            return original(self)
        finally:
            self.opt_d.step = step

    TrainStep._step = skipping if skip_d_update_at else original
    try:
        summary = train(validate_params(raw), root)
    finally:
        TrainStep._step = original
    rows = list(csv_rows(root / "reports" / "train_log.csv"))
    return {"summary": summary, "weights": checkpoint_weights(root, steps)}, rows


def checkpoint_weights(root: Path, steps: int) -> dict[str, torch.Tensor]:
    """The raw generator (``G.``) and discriminator (``D.``) tensors of the checkpoint at ``steps``."""
    (checkpoint,) = (root / "models" / "checkpoints").rglob(f"step-{steps:08d}.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = {f"G.{k}": v for k, v in state["generator"].items()}
    weights.update({f"D.{k}": v for k, v in state["discriminator"].items()})
    return weights


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


def derived_bound(floor: float) -> float:
    """The graph-vs-eager bound from the measured eager-vs-eager floor."""
    if not np.isfinite(floor):
        raise ValueError(f"eager-vs-eager difference {floor}: the eager runs themselves diverged")
    return max(FLOOR_FACTOR * floor, MIN_BOUND)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for the eager-vs-broken control alone", file=sys.stderr)
        return 2
    torch.backends.cudnn.deterministic = True  # fixed kernels: the floor is the GPU's, not the autotuner's
    torch.use_deterministic_algorithms(True, warn_only=True)  # where an op has none, it warns and runs as is
    machine = print_environment(())
    out = Path(os.environ.get("OUT", "."))
    images = np.random.default_rng(0).integers(0, 256, (2048, 3, 32, 32), dtype=np.uint8)
    results, ok = {}, True
    for name, config in CONFIGS.items():
        root = Path(tempfile.mkdtemp(prefix=f"ganops-graphs-{name}-"))
        write_random_prepared(root, images, num_classes=10)
        try:
            eager_a, rows_a = run(root, config, args.steps, graphs=False, device=args.device)
            eager_b, _ = run(root, config, args.steps, graphs=False, device=args.device)
            broken, _ = run(root, config, args.steps, graphs=False, device=args.device,
                            skip_d_update_at=args.steps // 2)
            floor = relative_difference(eager_a["weights"], eager_b["weights"])
            broken_diff = relative_difference(eager_a["weights"], broken["weights"])
            bound = derived_bound(floor)
            catches = broken_diff > bound
            results[name] = {"eager_vs_eager": floor, "broken_vs_eager": broken_diff, "bound": bound,
                             "bound_catches_a_broken_step": catches}
            line = (f"{name:18s} eager vs eager {floor:.2e}; one skipped D update vs eager {broken_diff:.2e} "
                    f"({'>' if catches else '<= (the floor hides a broken step: fewer --steps)'} "
                    f"bound {bound:.2e} = max({FLOOR_FACTOR:g} x floor, {MIN_BOUND:g}))")
            passed = catches
            if args.device == "cuda":
                graph, rows_g = run(root, config, args.steps, graphs=True)
                diff = relative_difference(eager_a["weights"], graph["weights"])
                loss_gap = max(abs(float(a["loss_d"]) - float(g["loss_d"])) for a, g in zip(rows_a, rows_g))
                passed = bool(catches and diff <= bound and np.isfinite(float(rows_g[-1]["loss_d"])))
                results[name].update({"graph_vs_eager": diff, "max_loss_d_gap": loss_gap,
                                      "loss_d_graph": [float(r["loss_d"]) for r in rows_g]})
                line += f"; graph vs eager {diff:.2e}; max loss_d gap {loss_gap:.2e}"
            results[name]["passed"] = passed
            print(f"{line}; {'ok' if passed else 'FAILED'}", flush=True)
        except Exception:  # one configuration failing must not hide the others' results
            passed = False
            results[name] = {"passed": False, "error": traceback.format_exc()}
            print(f"{name:18s} FAILED\n{results[name]['error']}", flush=True)
        ok = ok and passed
        (out / "cuda_graphs.json").write_text(json.dumps(results, indent=2))
    machine.finish()
    print(f"cuda_graph_parity={'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
