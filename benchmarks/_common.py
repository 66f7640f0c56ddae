"""What every benchmark prints the same way: the machine, versions and thread counts first; rounds in
alternating order; each figure as median [min-max] over the rounds; ``name=value`` lines last."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
from collections.abc import Sequence


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def print_environment(packages: Sequence[str] = ()) -> None:
    """Date, machine, the versions that matter and the thread counts each library will use."""
    import torch

    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    print(f"machine: {platform.machine()} {_cpu_model()}, {os.cpu_count()} logical cores{gpu}; {platform.platform()}")
    names = ["torch", "numpy", *packages]
    versions = [f"{name} {_version(name)}" for name in names if _version(name)]
    print(f"versions: python {platform.python_version()}, " + ", ".join(versions))
    threads = [f"torch intra-op {torch.get_num_threads()}", f"torch inter-op {torch.get_num_interop_threads()}",
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]
    try:
        import threadpoolctl

        blas = sorted({f"{i['internal_api']} {i['num_threads']}" for i in threadpoolctl.threadpool_info()
                       if i["user_api"] == "blas"})
        threads += [f"BLAS {', '.join(blas)}"] if blas else []
    except ImportError:
        pass
    print("threads: " + ", ".join(threads))


def round_order(sides: Sequence[str], round_index: int) -> list[str]:
    """Round 1 runs the sides in the given order, round 2 in reverse, and so on."""
    return list(sides) if round_index % 2 == 0 else list(reversed(sides))


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median [min-max]`` of the rounds' values."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
