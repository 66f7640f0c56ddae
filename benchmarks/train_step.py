"""Training throughput: ganops' train stage vs a plain eager PyTorch DCGAN loop, in one process.

The plain loop is written here in the style of the official PyTorch DCGAN example (separate D
passes on real and fake, BCE on logits, `.item()` reads every step, batches moved from host memory
each step). Both train the same architecture (ganops' DCGAN, unconditional, no spectral norm), the
same loss (minimax / BCE with the non-saturating G step), batch size and Adam settings on the same
random data. ganops runs its real `train()` (on a GPU: bf16 autocast, channels_last, fused Adam,
the dataset in GPU memory and each step replayed as one CUDA graph; `--compile` swaps the graphs for
torch.compile), with EMA and checkpointing.
Prints images/s for both, on CUDA the model FLOP utilisation against the GPU's dense bf16 peak, and
as the last line ``train_speedup_vs_plain_dcgan=<ganops images/s / plain images/s>``.

    python benchmarks/train_step.py [--steps 200] [--compile]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _generator import write_random_prepared
from ganops.config import validate_params
from ganops.models import DiscriminatorSpec, GeneratorSpec, build_discriminator, build_generator
from ganops.training import train

BF16_DENSE_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def plain_dcgan(images: torch.Tensor, cfg: dict, steps: int, device: torch.device) -> tuple[float, float]:
    """The reference loop; returns (images/s, FLOPs per step)."""
    torch.manual_seed(0)
    g_spec = GeneratorSpec(latent_dim=cfg["latent"], g_channels=cfg["width"], resolution=cfg["res"], channels=cfg["channels"])
    d_spec = DiscriminatorSpec(d_channels=cfg["width"], resolution=cfg["res"], channels=cfg["channels"], spectral_norm=False)
    netG, netD = build_generator(g_spec).to(device), build_discriminator(d_spec).to(device)
    criterion = nn.BCEWithLogitsLoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batch = cfg["batch"]
    order = torch.randperm(len(images))

    def step(i: int) -> None:
        index = order[(i * batch) % (len(images) - batch):][:batch]
        real = images[index].to(device).float() / 127.5 - 1  # the DataLoader's batch, moved each step
        netD.zero_grad()
        label = torch.full((batch,), 1.0, device=device)
        output = netD(real).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        noise = torch.randn(batch, cfg["latent"], device=device)
        fake = netG(noise)
        label.fill_(0.0)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        optimizerD.step()
        netG.zero_grad()
        label.fill_(1.0)
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        optimizerG.step()
        _ = (errD_real.item() + errD_fake.item(), errG.item(), D_x, D_G_z1, D_G_z2)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = float(counter.get_total_flops())
    for i in range(5):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start), flops


def ganops_train(images: np.ndarray, cfg: dict, steps: int, device: str, compile_: bool, cuda_graphs: bool = True) -> float:
    root = Path(tempfile.mkdtemp(prefix="ganops-bench-"))
    write_random_prepared(root, images)
    params = validate_params({
        "model": {"latent_dim": cfg["latent"], "g_channels": cfg["width"], "d_channels": cfg["width"],
                  "conditional": False, "spectral_norm": False},
        "train": {"steps": steps, "batch_size": cfg["batch"], "loss": "minimax", "device": device, "compile": compile_,
                  "cuda_graphs": cuda_graphs, "checkpoint_every": 10**9, "log_every": max(1, steps // 4)},
        "mlflow": {"enabled": False},
    })
    warm = params.model_copy(update={"train": params.train.model_copy(update={"steps": 10 if not compile_ else 30})})
    train(warm, root)  # warm-up: kernels, allocator, compilation
    for checkpoint in (root / "models" / "checkpoints").rglob("*.pt"):  # every setup's folder
        checkpoint.unlink()
    return train(params, root)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # CPU: the MNIST-sized default model; GPU: a 64x64 RGB DCGAN at batch 256, the classic setting.
    cfg = ({"res": 64, "channels": 3, "width": 64, "latent": 100, "batch": 256} if cuda
           else {"res": 32, "channels": 1, "width": 32, "latent": 64, "batch": 64})
    steps = args.steps or (300 if cuda else 150)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, cfg["channels"], cfg["res"], cfg["res"]), dtype=np.uint8)

    plain, flops = plain_dcgan(torch.from_numpy(images), cfg, steps, device)
    ours = ganops_train(images, cfg, steps, "cuda" if cuda else "cpu", args.compile)
    # On a GPU, also the same step without CUDA graphs: how much of the gain the graphs bring.
    eager = ganops_train(images, cfg, steps, "cuda", args.compile, cuda_graphs=False) if cuda and not args.compile else None
    name = torch.cuda.get_device_name(0) if cuda else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: DCGAN {cfg['res']}x{cfg['res']}x{cfg['channels']}, width {cfg['width']}, batch {cfg['batch']}, "
          f"{steps} steps; {flops / 1e9:.2f} GFLOP per training step")
    print(f"plain eager DCGAN loop: {plain:10.1f} images/s")
    print(f"ganops train{' (compiled)' if args.compile else ''}:       {ours:10.1f} images/s")
    if eager is not None:
        print(f"ganops train, cuda_graphs off: {eager:10.1f} images/s (CUDA graphs {ours / eager:.2f}x)")
    if cuda:
        peak = next((v for k, v in BF16_DENSE_PEAK.items() if k in name), None)
        for label, rate in (("plain", plain), ("ganops", ours)):
            achieved = flops * rate / cfg["batch"]
            mfu = f", MFU {achieved / peak:.2%} of {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else ""
            print(f"{label}: {achieved / 1e12:.2f} TFLOP/s{mfu}")
    print(f"train_speedup_vs_plain_dcgan={ours / plain:.2f}")


if __name__ == "__main__":
    main()
