"""ganops: a production MLOps pipeline for image GANs."""

import os
from collections.abc import Callable, MutableMapping

__version__ = "0.1.0"

# libgomp (torch's OpenMP on Linux) spins 300,000 times (about 3 ms) at a barrier before it sleeps.
# Beside another busy process one descheduled thread makes the other spin its time slice away (0.26x
# of idle speed beside one competitor on 2 cores); 3,000 spins recover the fair share (0.47x) but cost
# about 8 % when the machine is idle (benchmarks/contention.py). So the choice is made at start, from
# the processes runnable then: short spins only when another one is. libgomp reads the variable once,
# when torch loads it, so it is set here, before any ganops module imports torch; a GOMP_SPINCOUNT or
# OMP_WAIT_POLICY the user sets wins.
BUSY_SPIN_COUNT = "3000"


def runnable_others(proc_stat: str) -> int:
    """Runnable tasks other than this one, from the text of /proc/stat (its procs_running line)."""
    for line in proc_stat.splitlines():
        if line.startswith("procs_running "):
            return max(int(line.split()[1]) - 1, 0)
    return 0


def _runnable_others_now(samples: int = 5) -> int:
    """The fewest runnable others over a few reads 1 ms apart: a process that stays runnable, not a blip."""
    import time

    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as handle:
                counts.append(runnable_others(handle.read()))
        except OSError:  # not Linux: libgomp's default stands
            return 0
        time.sleep(0.001)
    return min(counts)


def choose_spin_count(environ: MutableMapping[str, str], others: Callable[[], int]) -> str:
    """What this process runs with, as a sentence; sets ``environ``'s GOMP_SPINCOUNT when ganops
    chooses it (``others``: how many other processes are runnable)."""
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        if name in environ:
            return f"{name}={environ[name]} (set by the user)"
    count = others()
    if count:
        environ["GOMP_SPINCOUNT"] = BUSY_SPIN_COUNT
        return f"GOMP_SPINCOUNT={BUSY_SPIN_COUNT} (set by ganops: {count} other runnable process(es) at start)"
    return "libgomp's default spin count (no other runnable process at start)"


CPU_WAIT = choose_spin_count(os.environ, _runnable_others_now)  # logged by the train stage


class GanopsError(Exception):
    """An error the user can fix (bad params, bad data, missing inputs); shown without a traceback.

    ``exit_code`` tells orchestrators whether retrying can help: 2 means fix the input first,
    75 (EX_TEMPFAIL) means a service was unavailable and a retry may succeed.
    """

    exit_code = 2
