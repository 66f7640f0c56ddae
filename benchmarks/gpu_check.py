"""The GPU path, end to end, on a CUDA machine: train (bf16 autocast, channels_last, fused Adam),
the domain evaluator and evaluation on the GPU, ONNX export with parity on every onnxruntime
provider present. Writes a JSON summary to $OUT/gpu_check.json (or ./gpu_check.json) and prints it; the last lines
are ``cuda_vs_cpu_images_per_s=`` and ``cuda_train_images_per_s=`` (ganops' own CUDA vs CPU path on
one machine: a sanity figure, not a peer comparison; benchmarks/train_step.py compares with peers).

    python benchmarks/gpu_check.py [--steps 600]

CPU images/s on the same machine are measured too, for the ratio.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
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

    cpu_params = validate_params({**raw, "train": {**raw["train"], "device": "cpu", "steps": 30, "log_every": 10}})
    cpu_root = Path(tempfile.mkdtemp(prefix="ganops-cpu-"))
    prepare(cpu_params, cpu_root)
    result["cpu_train_same_machine"] = train(cpu_params, cpu_root)
    result["cuda_vs_cpu_images_per_s"] = round(summary["images_per_s"] / result["cpu_train_same_machine"]["images_per_s"], 2)

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
