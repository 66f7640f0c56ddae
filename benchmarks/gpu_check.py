"""The GPU path, end to end, on a CUDA machine: train (bf16 autocast, channels_last, fused Adam),
the domain evaluator and evaluation on the GPU, ONNX export with parity on every onnxruntime
provider present. Writes a JSON summary to $OUT/gpu_check.json (or ./gpu_check.json) and prints it; the last lines
are ``cuda_vs_cpu_images_per_s=`` and ``cuda_train_images_per_s=`` (ganops' own CUDA vs CPU path on
one machine: a sanity figure, not a peer comparison; benchmarks/train_step.py compares with peers).

    python benchmarks/gpu_check.py [--steps 600] [--compare-steps 120]

The CUDA-vs-CPU ratio compares equal work: the same recipe, both devices trained for --compare-steps
steps from scratch, each rate the steady one (training images/s over the log intervals after the
first, so CUDA's graph capture, cuDNN autotuning and the CPU's first-touch allocations are outside
both). The --steps run is the end-to-end check (its evaluation and export), timed whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# isort: off
import ganops  # noqa: F401  (before torch, as under the ganops CLI: its libgomp setting must precede libgomp's loading)
# isort: on

import numpy as np
import torch

from _common import print_environment
from ganops.config import validate_params
from ganops.serving import OnnxGenerator, available_providers
from ganops.stages.evaluate import evaluate
from ganops.stages.export import export
from ganops.stages.prepare import prepare
from ganops.stages.train import train
from ganops.stages.train_evaluator import train_evaluator


def steady_images_per_s(log: Path) -> float:
    """Training images/s over the log intervals after the first (the first holds the warm-up)."""
    import csv

    rows = list(csv.DictReader(log.open()))
    if len(rows) < 2:
        raise RuntimeError(f"{log}: {len(rows)} log rows, need two to leave the warm-up out")
    return float(np.median([float(row["images_per_s"]) for row in rows[1:]]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--compare-steps", type=int, default=120, help="steps of each side of the CUDA-vs-CPU ratio")
    args = parser.parse_args()
    if args.compare_steps < 8:
        parser.error("--compare-steps must be at least 8 (four log intervals of at least 2 steps)")
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs one", file=sys.stderr)
        return 2
    machine = print_environment(("onnxruntime", "onnxruntime-gpu"))
    out_dir = Path(os.environ.get("OUT", "."))
    result: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                    "onnxruntime_providers": available_providers()}
    raw = {
        "data": {"source": "digits", "resolution": 32, "channels": 1},
        "model": {"g_channels": 64, "d_channels": 64, "conditional": True, "spectral_norm": True},
        "train": {"steps": args.steps, "batch_size": 256, "loss": "hinge", "device": "cuda", "checkpoint_every": 200,
                  "log_every": 50, "r1_gamma": 0.0,
                  "eval_every": 0},  # the training loop alone (the evaluation is checked below)
        "eval": {"num_samples": 2000, "device": "cuda", "spread_rounds": 10, "backbone": "domain"},
        "export": {"fp16": True},
        "mlflow": {"enabled": False},
    }
    root = Path(tempfile.mkdtemp(prefix="ganops-gpu-"))
    params = validate_params(raw)
    prepare(params, root)

    started = time.perf_counter()
    summary = train(params, root)
    torch.cuda.synchronize()
    result["cuda_train"] = {**summary, "process_wall_s": round(time.perf_counter() - started, 2)}

    rates = {}
    for device in ("cuda", "cpu"):  # equal work: the same recipe and steps on each device
        same = validate_params({**raw, "train": {**raw["train"], "device": device, "steps": args.compare_steps,
                                                 "log_every": args.compare_steps // 4, "checkpoint_every": 10**9}})
        same_root = Path(tempfile.mkdtemp(prefix=f"ganops-{device}-"))
        prepare(same, same_root)
        train(same, same_root)
        rates[device] = steady_images_per_s(same_root / "reports" / "train_log.csv")
    result["equal_work"] = {"steps": args.compare_steps, "steady_images_per_s": rates}
    result["cuda_vs_cpu_images_per_s"] = round(rates["cuda"] / rates["cpu"], 2)

    started = time.perf_counter()
    result["evaluator"] = train_evaluator(params, root)
    result["eval"] = evaluate(params, root)
    result["eval_wall_s"] = round(time.perf_counter() - started, 2)

    result["export"] = export(params, root)
    generator_z = np.random.default_rng(0).standard_normal((64, 64), dtype=np.float32)
    labels = np.arange(64) % 10
    outputs = {}
    for provider in available_providers():
        for name, path in (("fp32", root / "models" / "generator.onnx"), ("fp16", root / "models" / "fp16" / "generator.onnx")):
            session = OnnxGenerator(path, providers=[provider])
            outputs[(provider, name)] = session.run(generator_z, labels)
            start = time.perf_counter()
            for _ in range(50):
                session.run(generator_z, labels)
            result[f"ort_{provider}_{name}_batch64_ms"] = round((time.perf_counter() - start) / 50 * 1000, 3)
    reference = outputs[("CPUExecutionProvider", "fp32")]
    result["parity_vs_cpu_fp32"] = {f"{p}/{n}": float(np.abs(o - reference).max()) for (p, n), o in outputs.items()}

    text = json.dumps(result, indent=2, default=str)
    print(text)
    (out_dir / "gpu_check.json").write_text(text)
    machine.finish()
    print(f"cuda_vs_cpu_images_per_s={result['cuda_vs_cpu_images_per_s']}")
    print(f"cuda_train_images_per_s={summary['images_per_s']}")
    ok = np.isfinite(summary["loss_d"]) and result["eval"][result["eval"]["primary_metric"]] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
