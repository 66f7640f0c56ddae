"""Generator inference latency: onnxruntime (ganops' serving session) vs PyTorch eager, same generator.

Uses models/generator.{json,safetensors} when trained (`dvc repro train`), else a generator of the
architecture in params.yaml with seeded random weights (latency does not depend on the weights).
Identical work on both sides: the same latent vectors and labels, float32 in and out, one call at
a time on the CPU, all cores for both (torch's intra-op threads; onnxruntime's session as `ganops
serve` builds it). PyTorch runs under ``inference_mode``, as its docs advise for inference. The
outputs must agree within export.parity_tolerance's default, 1e-4 (else the benchmark fails). Each
round times both sides at batch 1 and 64 (``--repeats`` calls each, after warm-up calls),
alternating which side goes first; a round's figure is the median latency of its calls. Prints
median [min-max] over the rounds, the pooled p99, and last the ``name=value`` lines: onnxruntime
latency / eager latency, median of the rounds' ratios.

    python benchmarks/inference.py [--repeats 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import check_equal, describe_recipe, median, print_environment, round_order, spread
from _generator import benchmark_generator
from ganops.config import load_params
from ganops.serving import OnnxGenerator
from ganops.serving.export import write_onnx

OUTPUT_TOLERANCE = 1e-4  # max |difference| of the images, as export's parity check (export.parity_tolerance)


def call_ms(fn, repeats: int) -> list[float]:
    for _ in range(max(3, repeats // 20)):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = print_environment(("onnxruntime",), gpu_peaks=())
    params = load_params("params.yaml")
    generator, origin = benchmark_generator(params)
    print(describe_recipe(params, Path("params.yaml").resolve()) + ("; of it only the architecture: random weights"
          if origin.endswith("random weights") else f"; the project's params beside {origin}: `dvc status train` says "
          "whether they trained it"), flush=True)
    spec = generator.spec
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.onnx"
        write_onnx(generator, path, params.export, {"model": params.model.model_dump(), "train": params.train.model_dump()})
        session = OnnxGenerator(path, providers=["CPUExecutionProvider"])
        print(f"generator: {origin}; {spec.resolution}x{spec.resolution}x{spec.channels}, latent {spec.latent_dim}, "
              f"{spec.num_classes} classes, {sum(p.numel() for p in generator.parameters()):,} parameters; "
              f"onnxruntime {session.providers[0]}, {session.session.get_session_options().intra_op_num_threads} threads")
        ratios: dict[int, list[float]] = {}
        summary = []
        for batch in (1, 64):
            z = torch.randn(batch, spec.latent_dim, generator=torch.Generator().manual_seed(batch))
            labels = torch.arange(batch) % max(1, spec.num_classes) if spec.conditional else None
            z_np, labels_np = z.numpy(), (labels.numpy() if labels is not None else None)

            def eager(z=z, labels=labels):
                with torch.inference_mode():
                    return generator(z, labels)

            def ort(z_np=z_np, labels_np=labels_np):
                return session.run(z_np, labels_np)

            sides = {"torch eager": eager, "onnxruntime": ort}
            difference = float(np.abs(sides["onnxruntime"]() - eager().numpy()).max())
            check_equal(f"batch {batch}: onnxruntime vs eager images (max |difference|)", difference, OUTPUT_TOLERANCE)
            medians: dict[str, list[float]] = {name: [] for name in sides}
            pooled: dict[str, list[float]] = {name: [] for name in sides}
            for round_index in range(args.rounds):
                for name in round_order(list(sides), round_index):
                    times = call_ms(sides[name], args.repeats)
                    medians[name].append(statistics.median(times))
                    pooled[name] += times
                print(f"batch {batch:2d} round {round_index + 1}: " + ", ".join(
                    f"{name} {medians[name][-1]:.3f} ms" for name in round_order(list(sides), round_index)), flush=True)
            ratios[batch] = [o / e for o, e in zip(medians["onnxruntime"], medians["torch eager"])]
            for name in sides:
                summary.append(f"batch {batch:3d}  {name:12s} median latency {spread(medians[name], 3)} ms   "
                               f"p99 {np.percentile(pooled[name], 99):.3f} ms")
            summary.append(f"batch {batch:3d}  onnxruntime / eager {spread(ratios[batch], 3)}   "
                           f"max |difference| {difference:.1e}")
    print(f"\nmedian [min-max] over {args.rounds} rounds of {args.repeats} calls per side:")
    print("\n".join(summary))
    machine.finish()
    print(f"ort_vs_eager_latency_batch64={median(ratios[64]):.3f}")
    print(f"ort_vs_eager_latency_batch1={median(ratios[1]):.3f}")


if __name__ == "__main__":
    main()
