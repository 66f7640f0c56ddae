"""Training throughput: ganops' train() against the official PyTorch DCGAN loop and a tuned eager loop.

Three sides train the same networks -- ganops' DCGAN (the architecture of params.yaml's default,
built by build_generator / build_discriminator at CPU_SETTING's or CUDA_SETTING's sizes, not read
from params.yaml: class-conditional G with conditional batch norm, D with spectral norm and a
projection head, one logit per image; each batch's classes go to both) -- with the same batch size,
the same number of timed steps, the same seeded initial weights (torch.manual_seed(0), as train.seed
0 in ganops), the same minimax loss with the non-saturating G step, and Adam with lr 2e-4, betas (0.5, 0.999), on the
same seeded random uint8 images (4,096 of them, shuffled each epoch):

official  The training loop of github.com/pytorch/examples dcgan/main.py as published: fp32 (on CUDA
          with PyTorch's defaults, so convolutions run in TF32: cudnn.allow_tf32 is True), and
          ``cudnn.benchmark = True`` as the example sets it. Each step: netD.zero_grad(), D on the real
          batch, backward, ``.item()``; G on fresh noise, D on fake.detach(), backward, ``.item()``;
          optimizerD.step(); netG.zero_grad(), D on the fake batch again with D's parameters still
          requiring grad (so D's weight gradients are computed and thrown away), backward, ``.item()``;
          optimizerG.step(); then errD.item() and errG.item() for its log line. Differences from the
          file, all named: ganops' D outputs logits, so BCELoss after a Sigmoid becomes
          BCEWithLogitsLoss (the same loss, numerically safer) and D(x) is reported as
          sigmoid(logits).mean(); the log line is formatted every step but not printed, and the
          every-100-steps save_image calls are left out (I/O, not training); instead of a DataLoader,
          each batch is gathered from a pre-made uint8 tensor in host memory (the collation a
          DataLoader worker would do, here in the main process), moved to the device with ``.to()``
          every step, and scaled to [-1, 1] there -- a quarter of the bytes the example's float batches
          move, which favours this side.
tuned     What a careful engineer writes in plain eager PyTorch, keeping the official loop's structure
          (separate D calls on real and fake) and its loss and Adam settings. On every device: the uint8
          data set already on the device and indexed there, noise drawn there, one backward for the two D
          losses, D's parameters frozen (requires_grad_(False)) for the G step so that D's weight
          gradients are not computed, zero_grad(set_to_none=True), the losses accumulated on the device
          and read once at the end (no per-step host sync). On CUDA also: the same bf16 autocast as
          ganops, channels_last, fused Adam, cudnn.benchmark, TF32 allowed for fp32 matmuls. On CPU: fp32,
          as ganops on CPU, with the layout and the Adam implementation picked by measurement during
          development on the 2-core AMD EPYC machine at the CPU setting below (10 warm-up steps, then
          timed steps, variants alternated): channels_last ran at a median 1,697 images/s against 1,384
          for contiguous NCHW (3 alternations of 60 steps; channels_last won each), so tuned uses
          channels_last (``--tuned-memory-format contiguous`` reruns that choice); fused and foreach Adam
          were within noise of each other (medians 2,092 and 2,080 images/s over 5 alternations of 150
          steps), and tuned keeps fused (on a build without fused CPU Adam it falls back to foreach and
          the output says so). What tuned leaves out is exactly ganops' own work: the merged real+fake D
          forward (one D call per D update, so also one spectral-norm power iteration where plain
          PyTorch runs one per call) and, on CUDA, the CUDA graph.
ganops    ganops' real ``train()`` on a prepared data set of the same images (write_random_prepared),
          mlflow off, no checkpoint before the last step: a warm-up train() of 10 steps (30 with
          ``--compile``), then the measured one, whose ``images_per_s`` is read. That figure covers
          train()'s whole loop -- EMA update of the generator every step, the loss log every steps/4
          steps, the final checkpoint write and, on CUDA, the eager warm-up steps and the capture of the
          CUDA graph -- strictly more work than the baselines' timed loops, which cover only their
          training steps. On CUDA (without ``--compile``) a fourth, informational side ``ganops-eager``
          runs the same train() with train.cuda_graphs false.

Why the comparison is fair. Every measurement runs in a fresh Python process (``--side NAME``, which
prints one JSON line), so no global torch state -- cudnn.benchmark, TF32 flags, the caching
allocator, oneDNN primitive caches, threads -- leaks from one side into another; all processes get
the same environment and torch's default thread count, except libgomp's spin count: official and
tuned run with libgomp's default (GOMP_SPINCOUNT 300000, stated: _common.LIBGOMP_DEFAULT), ganops
with the one importing ganops chooses (ganops.CPU_WAIT, as under the CLI); each JSON line says. Each
round runs every side once, the order rotating between rounds (a Latin square: every side takes
every slot), so drift of the machine does not favour whoever runs first; figures are median
[min-max] over the rounds, and the speed-ups are medians of per-round ratios. The baselines are
timed after 10 untimed warm-up steps in the same process, as ganops is after its warm-up train(); on
CUDA the timed spans end with a device synchronisation.

FLOPs are counted for what each loop executes (torch.utils.flop_counter.FlopCounterMode: matmuls and
convolutions, forward and backward), once, in round 1, after the timed part of that process:
official and tuned on one eager step of their own loop; ganops as the difference between train()
with steps=2 and with steps=1 (eager, train.cuda_graphs false: the same step code the graph records),
so its set-up and final sample grid cancel out. ganops and tuned run the same convolutions (ganops
merges real and fake into one D call) and count the same up to spectral norm's power iterations;
official counts more by D's weight gradients in its G step, which equal one D forward pass on a
batch -- both checks are printed. MFU is achieved FLOP/s over the peak of the precision each side
runs, measured at the start of the same run (``_common.measure_peak_gflops``: the best square matmul):
on CUDA official against the TF32 matmul peak (only its two small matmuls, G's stem and D's head,
under 1 % of the FLOPs, run in plain fp32: PyTorch leaves TF32 matmuls off by default), tuned and
ganops against the bf16 matmul peak; on CPU all sides run fp32 against the fp32 sgemm peak. A side
whose best round is above the measured peak fails the benchmark.

Settings: CPU 32x32x1 images, width 32, latent 64, batch 64, 300 steps; CUDA 64x64x3, width 64,
latent 100, batch 256, 300 steps.

    python benchmarks/train_step.py [--steps N] [--rounds 3] [--compile]

The last two lines are the medians over the rounds of the per-round ratios of images/s:

    train_speedup_vs_official_dcgan=<ganops / official>
    train_speedup_vs_tuned_eager=<ganops / tuned>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

# isort: off
import ganops  # (before torch, as under the ganops CLI: its libgomp setting must precede libgomp's loading)
# isort: on

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _common import check_below_peak, median, print_environment, round_order, side_environment, spread
from _generator import write_random_prepared
from ganops.config import validate_params
from ganops.models import DiscriminatorSpec, GeneratorSpec, build_discriminator, build_generator
from ganops.stages.train import train

CPU_SETTING = {"res": 32, "channels": 1, "width": 32, "latent": 64, "batch": 64, "steps": 300}
CUDA_SETTING = {"res": 64, "channels": 3, "width": 64, "latent": 100, "batch": 256, "steps": 300}
DATASET_SIZE = 4096
NUM_CLASSES = 10
WARMUP_STEPS = 10  # untimed steps before each baseline's timed ones (ganops: a 10-step warm-up train())
LR, BETAS = 2e-4, (0.5, 0.999)  # the official example's Adam settings, on every side
MAIN_SIDES = ("official", "tuned", "ganops")


# --- the sides (each runs in its own process) ---------------------------------------------------------

def make_images(cfg: dict) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (DATASET_SIZE, cfg["channels"], cfg["res"], cfg["res"]),
                                             dtype=np.uint8)


def make_labels() -> np.ndarray:
    """The images' classes, as write_random_prepared assigns them (0..NUM_CLASSES-1 in turn)."""
    return np.arange(DATASET_SIZE, dtype=np.int64) % NUM_CLASSES


def build_networks(cfg: dict, device: torch.device, memory_format: torch.memory_format) -> tuple[nn.Module, nn.Module]:
    """ganops' default DCGAN (class-conditional, spectral norm in D), built as train() builds it (seed 0,
    G then D): the same initial weights on every side."""
    torch.manual_seed(0)
    g_spec = GeneratorSpec(latent_dim=cfg["latent"], g_channels=cfg["width"], resolution=cfg["res"], channels=cfg["channels"],
                           num_classes=NUM_CLASSES, class_names=[str(i) for i in range(NUM_CLASSES)])
    d_spec = DiscriminatorSpec(d_channels=cfg["width"], resolution=cfg["res"], channels=cfg["channels"], spectral_norm=True,
                               num_classes=NUM_CLASSES)
    return (build_generator(g_spec).to(device, memory_format=memory_format),
            build_discriminator(d_spec).to(device, memory_format=memory_format))


class Epochs:
    """Batch indices, the data set reshuffled every epoch (DataLoader(shuffle=True) with full batches)."""

    def __init__(self, size: int, batch: int, device: torch.device) -> None:
        self.size, self.batch, self.device, self.position = size, batch, device, size

    def next(self) -> torch.Tensor:
        if self.position + self.batch > self.size:
            self.order, self.position = torch.randperm(self.size, device=self.device), 0
        self.position += self.batch
        return self.order[self.position - self.batch : self.position]


class OfficialLoop:
    """pytorch/examples dcgan/main.py's training loop, as published (see the module docstring)."""

    def __init__(self, cfg: dict, device: torch.device, memory_format: str) -> None:
        torch.backends.cudnn.benchmark = True  # as main.py sets it
        self.cfg, self.device = cfg, device
        self.netG, self.netD = build_networks(cfg, device, torch.contiguous_format)
        self.criterion = nn.BCEWithLogitsLoss()  # main.py: nn.BCELoss() after D's Sigmoid
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=LR, betas=BETAS)
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=LR, betas=BETAS)
        self.images = torch.from_numpy(make_images(cfg))  # host memory, as a DataLoader's data set
        self.labels = torch.from_numpy(make_labels())
        self.sampler = Epochs(len(self.images), cfg["batch"], torch.device("cpu"))
        self.settings = "fp32" + (" (TF32 convolutions)" if device.type == "cuda" else "") + ", NCHW, Adam (default)"
        self.losses, self.last_line = [], ""

    def step(self) -> None:
        netD, netG, criterion, device, nz = self.netD, self.netG, self.criterion, self.device, self.cfg["latent"]
        real_label, fake_label = 1, 0
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        index = self.sampler.next()
        real_cpu = self.images[index].to(device).float().div_(127.5).sub_(1.0)  # the batch, moved
        classes = self.labels[index].to(device)  # its classes (the conditional networks take them)
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
        output = netD(real_cpu, classes).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.sigmoid().mean().item()
        noise = torch.randn(batch_size, nz, device=device)
        fake = netG(noise, classes)
        label.fill_(fake_label)
        output = netD(fake.detach(), classes).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.sigmoid().mean().item()
        errD = errD_real + errD_fake
        self.optimizerD.step()
        # (2) Update G network: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake, classes).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.sigmoid().mean().item()
        self.optimizerG.step()
        self.losses = [errD.item(), errG.item()]
        self.last_line = ("Loss_D: %.4f Loss_G: %.4f D(x): %.4f D(G(z)): %.4f / %.4f"  # noqa: UP031 -- main.py's own format
                          % (*self.losses, D_x, D_G_z1, D_G_z2))  # main.py prints this line

    def finish(self) -> list[float]:
        return self.losses


class TunedLoop:
    """A tuned eager loop with the official loop's structure (see the module docstring)."""

    def __init__(self, cfg: dict, device: torch.device, memory_format: str) -> None:
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (cuDNN's TF32 is on by default)
            self.memory_format = torch.channels_last
        else:
            self.memory_format = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[memory_format]
        self.cfg, self.device = cfg, device
        self.netG, self.netD = build_networks(cfg, device, self.memory_format)
        self.criterion = nn.BCEWithLogitsLoss()
        try:
            self.optD = torch.optim.Adam(self.netD.parameters(), lr=LR, betas=BETAS, fused=True)
            self.optG = torch.optim.Adam(self.netG.parameters(), lr=LR, betas=BETAS, fused=True)
            adam = "fused"
        except (RuntimeError, ValueError):  # a build without fused Adam for this device
            self.optD = torch.optim.Adam(self.netD.parameters(), lr=LR, betas=BETAS, foreach=True)
            self.optG = torch.optim.Adam(self.netG.parameters(), lr=LR, betas=BETAS, foreach=True)
            adam = "foreach"
        self.images = torch.from_numpy(make_images(cfg)).to(device)  # uint8, on the device once
        self.labels = torch.from_numpy(make_labels()).to(device)
        self.sampler = Epochs(len(self.images), cfg["batch"], device)
        batch = cfg["batch"]
        self.ones, self.zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)
        self.stats = torch.zeros(4, device=device)  # sums of loss_d, loss_g, D(x), D(G(z)), read at the end
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
        layout = "channels_last" if self.memory_format == torch.channels_last else "NCHW"
        self.settings = f"{'bf16 autocast' if cuda else 'fp32'}, {layout}, Adam ({adam})"

    def step(self) -> None:
        netD, netG, criterion = self.netD, self.netG, self.criterion
        index = self.sampler.next()
        real = self.images[index].float().div_(127.5).sub_(1.0).contiguous(memory_format=self.memory_format)
        classes = self.labels[index]
        noise = torch.randn(self.cfg["batch"], self.cfg["latent"], device=self.device)
        with self.autocast():
            fake = netG(noise, classes)
            d_real = netD(real, classes).float()
            d_fake = netD(fake.detach(), classes).float()
        loss_d = criterion(d_real, self.ones) + criterion(d_fake, self.zeros)
        self.optD.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optD.step()
        netD.requires_grad_(False)  # the G step needs gradients through D, not D's weight gradients
        with self.autocast():
            d_gen = netD(fake, classes).float()
        loss_g = criterion(d_gen, self.ones)
        self.optG.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optG.step()
        netD.requires_grad_(True)
        self.stats += torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().sigmoid().mean(),
                                   d_fake.detach().sigmoid().mean()])

    def finish(self) -> list[float]:
        return self.stats.tolist()[:2]  # the one host read of the losses


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(side: str, cfg: dict, steps: int, device: torch.device, memory_format: str, count_flops: bool) -> dict:
    loop = (OfficialLoop if side == "official" else TunedLoop)(cfg, device, memory_format)
    for _ in range(WARMUP_STEPS):
        loop.step()
    loop.finish()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    losses = loop.finish()
    synchronize(device)
    result = {"images_per_s": steps * cfg["batch"] / (time.perf_counter() - start), "settings": loop.settings,
              "finite_losses": bool(np.isfinite(losses).all())}
    if count_flops:  # after the timed part: one more step of the same loop, counted
        with FlopCounterMode(display=False) as counter:
            loop.step()
            loop.finish()
        result["flops_per_step"] = float(counter.get_total_flops())
        if side == "tuned":  # one D forward pass on one batch: what D's weight gradients cost in official's G step
            real = loop.images[: cfg["batch"]].float().contiguous(memory_format=loop.memory_format)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                loop.netD(real, loop.labels[: cfg["batch"]])
            result["d_forward_flops"] = float(counter.get_total_flops())
    return result


def ganops_params(cfg: dict, steps: int, device: str, compile_: bool, cuda_graphs: bool):
    return validate_params({
        "model": {"latent_dim": cfg["latent"], "g_channels": cfg["width"], "d_channels": cfg["width"],
                  "conditional": True, "spectral_norm": True},
        "train": {"steps": steps, "batch_size": cfg["batch"], "loss": "minimax", "lr_g": LR, "lr_d": LR,
                  "beta1": BETAS[0], "beta2": BETAS[1], "seed": 0, "device": device, "compile": compile_,
                  "cuda_graphs": cuda_graphs, "checkpoint_every": 10**9, "log_every": max(1, steps // 4),
                  "eval_every": 0},  # the training loop alone, as the baselines (the watch: best_snapshot.py)
        "mlflow": {"enabled": False},
    })


def with_steps(params, steps: int, **train_updates):
    return params.model_copy(update={"train": params.train.model_copy(update={"steps": steps, **train_updates})})


def remove_checkpoints(root: Path) -> None:
    """A fresh run each time: train() would otherwise resume from the previous run's last checkpoint."""
    for checkpoint in (root / "models" / "checkpoints").rglob("*.pt"):
        checkpoint.unlink()


def run_ganops(cfg: dict, steps: int, device: torch.device, compile_: bool, cuda_graphs: bool, count_flops: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as folder:
        root = Path(folder)
        write_random_prepared(root, make_images(cfg), num_classes=NUM_CLASSES)
        params = ganops_params(cfg, steps, device.type, compile_, cuda_graphs)
        train(with_steps(params, 30 if compile_ else 10), root)  # warm-up: kernels, allocator, compilation
        remove_checkpoints(root)
        summary = train(params, root)
        result = {"images_per_s": float(summary["images_per_s"]),
                  "finite_losses": bool(np.isfinite([summary["loss_d"], summary["loss_g"]]).all())}
        on_cuda = device.type == "cuda"
        graphs = on_cuda and cuda_graphs and not compile_
        result["settings"] = (("bf16 autocast" if on_cuda else "fp32") + ", channels_last, Adam ("
                              + ("fused, capturable" if on_cuda else "foreach") + ")"
                              + (", one CUDA graph per step" if graphs else "") + (", torch.compile" if compile_ else ""))
        if count_flops:  # one step of ganops' own step code: train(steps=2) - train(steps=1), eager
            totals = []
            for n in (1, 2):
                remove_checkpoints(root)
                with FlopCounterMode(display=False) as counter:
                    train(with_steps(params, n, cuda_graphs=False, compile=False), root)
                totals.append(counter.get_total_flops())
            result["flops_per_step"] = float(totals[1] - totals[0])
    return result


def run_side(args: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = CUDA_SETTING if cuda else CPU_SETTING
    steps = args.steps or cfg["steps"]
    if args.side in ("official", "tuned"):
        result = run_baseline(args.side, cfg, steps, device, args.tuned_memory_format, args.count_flops)
    else:
        result = run_ganops(cfg, steps, device, args.compile, args.side == "ganops", args.count_flops)
    result.update(side=args.side, threads=torch.get_num_threads(), gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
                  cpu_wait=ganops.CPU_WAIT,
                  pid=os.getpid())
    print(json.dumps(result), flush=True)


# --- the parent: rounds, each side in a fresh process ---------------------------------------------------

def measure(side: str, args: argparse.Namespace, count_flops: bool) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--tuned-memory-format",
               args.tuned_memory_format]
    command += ["--steps", str(args.steps)] if args.steps else []
    command += ["--compile"] if args.compile else []
    command += ["--count-flops"] if count_flops else []
    done = subprocess.run(command, capture_output=True, text=True, env=side_environment(side))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"side {side} failed (exit code {done.returncode})")
    result = json.loads(lines[-1])
    if not result["finite_losses"]:
        raise SystemExit(f"side {side} trained to non-finite losses")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (CPU 300, CUDA 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every side once, in rotating order")
    parser.add_argument("--compile", action="store_true", help="ganops with train.compile (torch.compile)")
    parser.add_argument("--tuned-memory-format", choices=["contiguous", "channels_last"], default="channels_last",
                        help="the tuned loop's layout on CPU (on CUDA it always uses channels_last)")
    parser.add_argument("--side", choices=[*MAIN_SIDES, "ganops-eager"], help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    machine = print_environment(())
    cuda = torch.cuda.is_available()
    cfg = CUDA_SETTING if cuda else CPU_SETTING
    steps = args.steps or cfg["steps"]
    name = torch.cuda.get_device_name(0) if cuda else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {name}")
    print(f"model: ganops DCGAN {cfg['res']}x{cfg['res']}x{cfg['channels']}, width {cfg['width']}, latent {cfg['latent']}, "
          f"batch {cfg['batch']}; {steps} timed steps per measurement after {WARMUP_STEPS} warm-up steps "
          f"(ganops: a warm-up train() first); {args.rounds} rounds, every measurement in a fresh process")
    if args.rounds < 3:
        print(f"note: {args.rounds} round(s) is a smoke run; results need at least 3")
    sides = list(MAIN_SIDES) + (["ganops-eager"] if cuda and not args.compile else [])
    rates: dict[str, list[float]] = {side: [] for side in sides}
    first: dict[str, dict] = {}
    ratios: dict[str, list[float]] = {"ganops/official": [], "ganops/tuned": [], "tuned/official": []}
    for index in range(args.rounds):
        order = round_order(sides, index)
        for side in order:
            result = measure(side, args, count_flops=index == 0 and side != "ganops-eager")
            first.setdefault(side, result)
            rates[side].append(result["images_per_s"])
        for key in ratios:
            a, b = key.split("/")
            ratios[key].append(rates[a][-1] / rates[b][-1])
        rounds = " | ".join(f"{side} {rates[side][-1]:.1f}" for side in order)
        print(f"round {index + 1} ({', '.join(order)}): {rounds} images/s; "
              + ", ".join(f"{key} {values[-1]:.2f}" for key, values in ratios.items()), flush=True)

    flops = {side: first[side]["flops_per_step"] for side in MAIN_SIDES}
    flops["ganops-eager"] = flops["ganops"]  # the same step code
    d_forward = first["tuned"]["d_forward_flops"]
    print(f"FLOP check: ganops / tuned per step = {flops['ganops'] / flops['tuned']:.4f} (the same convolutions, "
          f"ganops in one D call for real and fake); official - tuned = {(flops['official'] - flops['tuned']) / 1e9:.3f} "
          f"GFLOP, one D forward pass on a batch = {d_forward / 1e9:.3f} GFLOP (D's weight gradients in official's G step)")
    if cuda:  # peaks measured at the start of this run (bf16 and TF32 matmuls)
        peaks = {side: (machine.gpu_peak_gflops["bfloat16"] * 1e9, "bf16, measured") for side in sides}
        peaks["official"] = (machine.gpu_peak_gflops["tf32"] * 1e9, "TF32, measured")
    else:
        peaks = {side: (machine.cpu_peak_gflops * 1e9, "fp32, measured") for side in sides}
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    print(f"{'side':13s} {'images/s median [min-max]':30s} {'GFLOP/step':>10s} {unit:>9s}  {'MFU (peak)':40s} settings")
    for side in sides:
        achieved = flops[side] * median(rates[side]) / cfg["batch"]
        peak, kind = peaks[side]
        check_below_peak(side, flops[side] * max(rates[side]) / cfg["batch"] / 1e9, peak / 1e9)
        mfu = f"{achieved / peak:6.2%} of {peak / scale:.1f} {unit} {kind}"
        print(f"{side:13s} {spread(rates[side], 1):30s} {flops[side] / 1e9:10.3f} {achieved / scale:9.2f}  {mfu:40s} "
              f"{first[side]['settings']}")
    threads = sorted({result["threads"] for result in first.values()})
    print(f"torch intra-op threads in each side's process: {', '.join(map(str, threads))}")
    for key, values in ratios.items():
        print(f"{key}: {spread(values)} (per-round ratios, median [min-max])")
    machine.finish()
    print(f"train_speedup_vs_official_dcgan={median(ratios['ganops/official']):.2f}")
    print(f"train_speedup_vs_tuned_eager={median(ratios['ganops/tuned']):.2f}")


if __name__ == "__main__":
    main()
