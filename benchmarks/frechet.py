"""Fréchet distance: ganops (Cholesky + symmetric eigenvalues) vs pytorch-fid (scipy sqrtm).

Both run in this process on the same statistics of 10,000 x 2048 random features (the shape of
Inception pool features), float64, with the same BLAS and thread count. Rounds alternate which side
goes first; prints median [min-max] seconds over the rounds and, as the last line,
``frechet_speedup_vs_pytorch_fid=<median of the rounds' ratios>``; exits 1 if the two distances
differ by more than 1e-6 relative.

    python benchmarks/frechet.py [--samples 10000] [--dim 2048] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from _common import median, print_environment, round_order, spread
from ganops.metrics.frechet import feature_statistics, frechet_distance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Two correlated, shifted feature sets, as real and generated Inception features are.
    mixing = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    real = np.maximum(rng.normal(size=(args.samples, args.dim)) @ mixing, 0)
    fake = np.maximum(rng.normal(size=(args.samples, args.dim)) @ (mixing * 1.05) + 0.01, 0)
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)

    machine = print_environment(("scipy", "pytorch-fid", "threadpoolctl"))
    sides = {"ganops frechet_distance": lambda: frechet_distance(mu1, sigma1, mu2, sigma2),
             "pytorch-fid calculate_frechet_distance": lambda: calculate_frechet_distance(mu1, sigma1, mu2, sigma2)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    values: dict[str, float] = {}
    for round_index in range(args.rounds):
        for name in round_order(list(sides), round_index):
            start = time.perf_counter()
            values[name] = float(sides[name]())
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {seconds[n][-1] * 1000:.1f} ms"
                                                   for n in round_order(list(sides), round_index)), flush=True)
    ours, peer = values["ganops frechet_distance"], values["pytorch-fid calculate_frechet_distance"]
    relative = abs(ours - peer) / abs(peer)
    ratios = [p / o for o, p in zip(*seconds.values())]
    print(f"features: {args.samples} x {args.dim}, float64; median [min-max] over {args.rounds} rounds")
    for name in sides:
        print(f"{name:40s} {spread([t * 1000 for t in seconds[name]], 1)} ms   value {values[name]:.10f}")
    print(f"relative difference: {relative:.3e} (limit 1e-6); speedup per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    machine.finish()
    print(f"frechet_speedup_vs_pytorch_fid={median(ratios):.2f}")
    return 0 if relative <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
