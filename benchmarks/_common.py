"""What every benchmark prints the same way: the machine (CPU family, model and flags, cores, load and
steal time, a floating-point peak measured in the same run, the GPU), versions and thread counts first;
rounds in a rotating order (a Latin square: every side takes every slot); each figure as median
[min-max] over the rounds; ``name=value`` lines last."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ganops.config import Params

# the instruction sets a CPU's floating-point rate depends on (from /proc/cpuinfo's flags)
FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


class BenchmarkFailure(SystemExit):
    """A figure the benchmark cannot stand behind: outputs that differ, a rate above the measured peak."""

    def __init__(self, message: str) -> None:
        super().__init__(f"benchmark failed: {message}")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_description() -> str:
    """Vendor, model name, family/model/stepping, the flags of interest, physical and logical cores."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    have = [f for f in FLAGS_OF_INTEREST if f in flags]
    lacks = [f for f in ("avx2", "avx512f", "amx_tile") if f not in flags]
    physical = _physical_cores()
    return (f"{info.get('vendor_id', platform.machine())} {info.get('model name', platform.processor())}, "
            f"family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping {info.get('stepping', '?')}, "
            f"{info.get('cpu MHz', '?')} MHz; flags {' '.join(have) or 'none of interest'}"
            + (f" (no {', '.join(lacks)})" if lacks else "")
            + f"; {physical} physical / {os.cpu_count()} logical cores")


def _physical_cores() -> int | str:
    pairs = set()
    try:
        with open("/proc/cpuinfo") as handle:
            physical_id = "0"
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical_id = value.strip()
                elif key.strip() == "core id":
                    pairs.add((physical_id, value.strip()))
    except OSError:
        pass
    return len(pairs) or "?"


@dataclass(frozen=True)
class CpuTimes:
    """The load average and /proc/stat's cumulative CPU jiffies at one moment."""

    at: float
    load: tuple[float, float, float]
    total: int
    steal: int
    idle: int


def cpu_times() -> CpuTimes:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    total = steal = idle = 0
    try:
        with open("/proc/stat") as handle:
            # cpu user nice system idle iowait irq softirq steal guest guest_nice
            values = [int(v) for v in handle.readline().split()[1:]]
        total, idle, steal = sum(values[:8]), values[3] + values[4], values[7]
    except (OSError, IndexError, ValueError):
        pass
    return CpuTimes(time.time(), tuple(load), total, steal, idle)


def describe_load(before: CpuTimes, after: CpuTimes | None = None) -> str:
    """``load average 1/5/15``; with ``after``: the interval's busy and steal shares of all cores."""
    text = "load average {:.2f} {:.2f} {:.2f}".format(*(after or before).load)
    if after is not None and after.total > before.total:
        span = after.total - before.total
        busy = 1 - (after.idle - before.idle) / span
        text += (f"; over the last {after.at - before.at:.0f} s: cores {busy:.0%} busy, "
                 f"steal {(after.steal - before.steal) / span:.1%}")
    return text


def measure_peak_gflops(device: str = "cpu", dtype: str = "float32", seconds: float = 2.0) -> float:
    """The machine's floating-point rate measured now: the best of repeated square matmuls
    (sgemm on CPU at the current thread count, torch's and numpy's BLAS each ``seconds``; bf16 or
    TF32 tensor cores on a GPU), in GFLOP/s.
    Achieved rates are set against this, so a figure above it is a measuring error."""
    import torch

    kind = {"float32": torch.float32, "bfloat16": torch.bfloat16, "tf32": torch.float32}[dtype]
    size = 2048 if device == "cpu" else 8192
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        a = torch.randn(size, size, device=device, dtype=kind)
        b = torch.randn(size, size, device=device, dtype=kind)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        torch.mm(a, b)
        sync()
        best, deadline = 0.0, time.perf_counter() + seconds
        repeats = 1 if device == "cpu" else 10
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b)
            sync()
            best = max(best, 2 * size**3 * repeats / (time.perf_counter() - started))
        if device == "cpu":  # torch's BLAS (MKL in the pip wheels) is not the fastest on every CPU:
            # on AMD numpy's OpenBLAS sgemm ran 1.3-1.4x faster, and onnxruntime's own kernels can too
            x, y = a.numpy(), b.numpy()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                x @ y
                best = max(best, 2 * size**3 / (time.perf_counter() - started))
        return best / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def check_below_peak(what: str, gflops: float, peak_gflops: float) -> float:
    """The share of the measured peak; a figure above the peak fails the benchmark."""
    if not gflops <= peak_gflops:
        raise BenchmarkFailure(f"{what}: {gflops:.1f} GFLOP/s is above the peak measured in this run "
                               f"({peak_gflops:.1f} GFLOP/s); the FLOP count or the timing is wrong")
    return gflops / peak_gflops


def check_equal(what: str, difference: float, tolerance: float) -> None:
    """Outputs compared across sides must agree; a difference over ``tolerance`` (or NaN) fails."""
    if not difference <= tolerance:
        raise BenchmarkFailure(f"{what}: difference {difference:.3g} over the tolerance {tolerance:.3g}")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_description() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU"
    driver = "?"
    try:
        import subprocess

        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    props = torch.cuda.get_device_properties(0)
    return (f"GPU {props.name} x{torch.cuda.device_count()}, {props.total_memory / 2**30:.0f} GiB, "
            f"driver {driver}, CUDA {torch.version.cuda}")


@dataclass(frozen=True)
class Machine:
    """What a benchmark's figures are relative to: printed first, and its peak used for every share."""

    cpu_peak_gflops: float
    gpu_peak_gflops: dict[str, float]
    started: CpuTimes

    def finish(self) -> None:
        """Print the load over the whole run (before the ``name=value`` lines)."""
        print(f"after: {describe_load(self.started, cpu_times())}")


# libgomp's own spin count (its docs: 300,000 when OMP_WAIT_POLICY is unset), what plain torch runs with;
# a baseline side gets it stated, since importing ganops may set its own (ganops.CPU_WAIT says which).
LIBGOMP_DEFAULT = {"GOMP_SPINCOUNT": "300000"}


def side_environment(side: str) -> dict[str, str]:
    """The environment of a side's process: ganops' as the CLI has it (the script imports ganops
    before torch), every other side with libgomp's default spin count."""
    return dict(os.environ) if side.startswith("ganops") else dict(os.environ, **LIBGOMP_DEFAULT)


def print_environment(packages: Sequence[str] = (), gpu_peaks: Sequence[str] = ("bfloat16", "tf32")) -> Machine:
    """Date, machine (with a peak measured now), the versions that matter and the thread counts each
    library will use. Returns the :class:`Machine`; call its ``finish()`` at the end."""
    import torch

    started = cpu_times()
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"cpu: {cpu_description()}")
    print(f"gpu: {_gpu_description()}")
    print(f"os: {platform.platform()}; before: {describe_load(started)}")
    names = ["torch", "numpy", *packages]
    versions = [f"{name} {_version(name)}" for name in names if _version(name)]
    print(f"versions: python {platform.python_version()}, " + ", ".join(versions))
    threads = [f"torch intra-op {torch.get_num_threads()}", f"torch inter-op {torch.get_num_interop_threads()}",
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
               f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')} (this process; each side's is named)"]
    try:
        import threadpoolctl

        blas = sorted({f"{i['internal_api']} {i['num_threads']}" for i in threadpoolctl.threadpool_info()
                       if i["user_api"] == "blas"})
        threads += [f"BLAS {', '.join(blas)}"] if blas else []
    except ImportError:
        pass
    print("threads: " + ", ".join(threads))
    cpu_peak = measure_peak_gflops("cpu")
    gpu_peak = {dtype: measure_peak_gflops("cuda", dtype) for dtype in gpu_peaks} if torch.cuda.is_available() else {}
    print(f"measured peak: CPU {cpu_peak:.1f} GFLOP/s fp32 (best 2048^3 sgemm, 2 s each in torch's and numpy's BLAS, "
          f"{torch.get_num_threads()} threads)"
          + "".join(f"; GPU {value / 1000:.1f} TFLOP/s {dtype}" for dtype, value in gpu_peak.items()),
          flush=True)
    return Machine(cpu_peak, gpu_peak, started)


def describe_recipe(params: Params, source: str | Path) -> str:
    """Two lines naming the params file (or how the params were made) and the knobs that decide what
    is measured: data, model, the training recipe, the evaluation protocol (issue 40)."""
    data, model, train, ev = params.data, params.model, params.train, params.eval
    penalties = ""  # the penalties the step applies: R1 (and R2 for rpgan) when r1_gamma > 0, the GP for wgan-gp
    if train.r1_gamma > 0:
        penalties += f", r1_gamma {train.r1_gamma:g}" + (" (R1 and R2)" if train.loss == "rpgan" else "")
    if train.loss == "wgan-gp":
        penalties += f", gp_weight {train.gp_weight:g}"
    return (f"recipe: {source}: data {data.source}" + (f" ({data.path})" if data.path else "")
            + f" {data.resolution}x{data.resolution}x{data.channels}; model {model.arch}, latent {model.latent_dim}, "
            f"channels g {model.g_channels} / d {model.d_channels} (max {model.max_channels}), "
            f"{'conditional' if model.conditional else 'unconditional'}, spectral_norm {model.spectral_norm}\n"
            f"  train {train.steps} steps x batch {train.batch_size}, loss {train.loss}{penalties}, "
            f"lr_g {train.lr_g:g} lr_d {train.lr_d:g}, betas ({train.beta1:g}, {train.beta2:g}), d_steps {train.d_steps}, "
            f"ema_decay {train.ema_decay:g}, augment {train.augment}; eval {ev.num_samples} samples in {ev.draws} draws "
            f"vs {ev.reference}, backbone {ev.backbone}, fid_protocol {ev.fid_protocol}"
            + (f", native_size {ev.native_size}" if ev.native_size else "")
            + f", spread_rounds {ev.spread_rounds}, truncation {ev.truncation} x {ev.truncation_samples}")


def round_order(sides: Sequence[str], round_index: int) -> list[str]:
    """The sides' order in round ``round_index``: row ``round_index mod n`` of a Williams Latin square,
    so over n rounds every side takes every slot once (and, for even n, follows every other side
    once). Two sides alternate; more rotate, so the middle ones move too."""
    n = len(sides)
    first = [0]
    for k in range(1, n):  # 0, 1, n-1, 2, n-2, ...
        first.append((k + 1) // 2 if k % 2 else n - k // 2)
    return [sides[(slot + round_index) % n] for slot in first]


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median [min-max]`` of the rounds' values."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """``function()``'s result and its wall seconds."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started
