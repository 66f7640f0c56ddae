"""Generator inference: onnxruntime (ganops' serving session) vs PyTorch eager, same generator.

Uses models/generator.{json,safetensors} when trained (`dvc repro train`), else a generator of the
architecture in params.yaml with seeded random weights (latency does not depend on the weights).
Measures the median latency at batch 1 and 64 in this one process and prints, as the last line,
``ort_vs_eager_latency_batch1=<onnxruntime latency / eager latency>``.

    python benchmarks/inference.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from _generator import benchmark_generator
from ganops.config import load_params
from ganops.export import write_onnx
from ganops.serving import OnnxGenerator


def median_ms(fn, repeats: int) -> tuple[float, float]:
    for _ in range(max(3, repeats // 20)):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    params = load_params("params.yaml")
    generator, origin = benchmark_generator(params)
    spec = generator.spec
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.onnx"
        write_onnx(generator, path, params)
        session = OnnxGenerator(path, providers=["CPUExecutionProvider"])
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}")
        print(f"generator: {origin}; {spec.resolution}x{spec.resolution}x{spec.channels}, latent {spec.latent_dim}, "
              f"{spec.num_classes} classes, {sum(p.numel() for p in generator.parameters()):,} parameters")
        ratios = {}
        for batch in (1, 64):
            z = torch.randn(batch, spec.latent_dim, generator=torch.Generator().manual_seed(batch))
            labels = torch.arange(batch) % max(1, spec.num_classes) if spec.conditional else None
            z_np, labels_np = z.numpy(), (labels.numpy() if labels is not None else None)
            with torch.inference_mode():
                eager, eager_p99 = median_ms(lambda: generator(z, labels), args.repeats)
            ort, ort_p99 = median_ms(lambda: session.run(z_np, labels_np), args.repeats)
            ratios[batch] = ort / eager
            print(f"batch {batch:3d}: torch eager {eager:8.3f} ms (p99 {eager_p99:8.3f})   "
                  f"onnxruntime {ort:8.3f} ms (p99 {ort_p99:8.3f})   ratio {ort / eager:.3f}")
    print(f"ort_vs_eager_latency_batch64={ratios[64]:.3f}")
    print(f"ort_vs_eager_latency_batch1={ratios[1]:.3f}")


if __name__ == "__main__":
    main()
