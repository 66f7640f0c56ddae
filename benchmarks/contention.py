"""Training on a busy machine: images/s idle and beside one and two competing CPU-bound processes,
ganops' train() against the tuned eager loop under the same load.

The sides are benchmarks/train_step.py's ``ganops`` and ``tuned`` (the same networks, data, loss,
Adam settings and CPU setting; each measurement a fresh process with torch's default thread count
and the environment this script was started with, except libgomp's spin count: ganops runs with the
one its import chooses from the load at start (ganops.CPU_WAIT), tuned with libgomp's default, as
plain torch does). A competitor is a separate Python process spinning one core (``while True:
pass``), started before the side's process and killed after it; ``load`` counts them. Each round
runs every (load, side) pair once, the loads in rotating order and the sides rotating within each
load, so drift does not favour one. Figures: images/s median [min-max] over the rounds; the share of
idle speed is the median of per-round ratios (loaded / idle of the same side in the same round). The
fair share beside one competitor on 2 cores is 0.5x.

With ``--variants`` ganops also runs under the settings ganops' default was chosen from (VARIANTS:
libgomp's default spin count, shorter and longer ones, the passive wait policy, one thread), each
measured as a side.

    python benchmarks/contention.py [--rounds 3] [--steps 100] [--loads 0 1 2] [--variants] [--only SIDE ...]

Last lines: ``ganops_share_of_idle_load<k>=`` for each load > 0 and
``ganops_vs_tuned_load<k>=`` (images/s ratio under the same load).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from _common import median, print_environment, round_order, side_environment, spread

SIDES = ("ganops", "tuned")
# ganops under the settings a fix could change, each measured like a side (name: environment)
VARIANTS = {"ganops GOMP_SPINCOUNT=300000 (libgomp's)": {"GOMP_SPINCOUNT": "300000"},
            "ganops GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
            "ganops GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"},
            "ganops GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "ganops OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            "ganops 1 thread": {"OMP_NUM_THREADS": "1"}}
TRAIN_STEP = Path(__file__).resolve().parent / "train_step.py"


@contextmanager
def competitors(count: int):
    """``count`` single-core CPU-bound processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def measure(side: str, steps: int) -> dict:
    import json

    env = dict(side_environment(side), **VARIANTS.get(side, {}))
    done = subprocess.run([sys.executable, str(TRAIN_STEP), "--side", side.split()[0], "--steps", str(steps)],
                          capture_output=True, text=True, env=env)
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per measurement")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="competitor counts; 0 must be one")
    parser.add_argument("--variants", action="store_true",
                        help="also ganops under each setting of VARIANTS (wait policy, spin count, one thread)")
    parser.add_argument("--only", nargs="+", metavar="SIDE", help="measure only these sides (names as printed)")
    args = parser.parse_args()
    sides = [*SIDES, *VARIANTS] if args.variants else list(SIDES)
    if args.only:
        unknown = set(args.only) - set(sides)
        if unknown:
            parser.error(f"unknown sides {sorted(unknown)}; the sides are {sides}")
        sides = [side for side in sides if side in args.only]
    if 0 not in args.loads:
        parser.error("--loads must include 0 (idle), the reference of every share")
    machine = print_environment(())
    print(f"setting: train_step.py's CPU setting, {args.steps} timed steps per measurement; competitors spin one "
          f"core each; {args.rounds} rounds", flush=True)
    rates = {(load, side): [] for load in args.loads for side in sides}
    threads, spin_counts = set(), {}
    for index in range(args.rounds):
        cells = []
        for load in round_order(args.loads, index):
            for side in round_order(sides, index):
                with competitors(load):
                    result = measure(side, args.steps)
                rates[load, side].append(result["images_per_s"])
                threads.add(result["threads"])
                spin_counts.setdefault((load, side), set()).add(result.get("gomp_spincount") or "unset")
                cells.append(f"load {load} {side} {result['images_per_s']:.0f}")
        print(f"round {index + 1}: " + ", ".join(cells) + " images/s", flush=True)

    print(f"\ntorch intra-op threads in each side's process: {', '.join(map(str, sorted(threads)))}")
    # ganops chooses its spin count at start, from the load then: so per load, over the rounds
    print("GOMP_SPINCOUNT in each side's process, by load: " + "; ".join(
        f"load {load}: " + ", ".join(f"{side} {'/'.join(sorted(spin_counts[load, side]))}" for side in sides)
        for load in args.loads))
    print(f"{'load':>4} {'side':32s} {'images/s median [min-max]':28s} {'share of idle':22s}")
    shares: dict[tuple[int, str], list[float]] = {}
    for load in args.loads:
        for side in sides:
            shares[load, side] = [loaded / idle for loaded, idle in zip(rates[load, side], rates[0, side])]
            print(f"{load:>4} {side:32s} {spread(rates[load, side], 0):28s} {spread(shares[load, side], 2):22s}")
    libgomp = next(side for side in VARIANTS if "libgomp" in side)
    compare_idle = "ganops" in sides and libgomp in sides
    if compare_idle:  # what ganops' spin count costs idle, against libgomp's own (same round)
        idle_ratio = [g / d for g, d in zip(rates[0, "ganops"], rates[0, libgomp])]
        print(f"ganops idle / {libgomp} idle per round: {', '.join(f'{r:.2f}' for r in idle_ratio)}")
    machine.finish()
    if compare_idle:
        print(f"ganops_idle_vs_libgomp_spin_count={median(idle_ratio):.2f}")
    for load in args.loads:
        if load:
            if "ganops" in sides:
                print(f"ganops_share_of_idle_load{load}={median(shares[load, 'ganops']):.2f}")
    for load in args.loads:
        if "ganops" in sides and "tuned" in sides:
            ratio = [g / t for g, t in zip(rates[load, "ganops"], rates[load, "tuned"])]
            print(f"ganops_vs_tuned_load{load}={median(ratio):.2f}")


if __name__ == "__main__":
    main()
