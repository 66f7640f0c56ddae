"""Fréchet distance: ganops (Cholesky + symmetric eigenvalues) vs pytorch-fid (scipy sqrtm).

Both run in this process on the same statistics of 10,000 x 2048 random features (the shape of
Inception pool features). Prints the timings and, as the last line,
``frechet_speedup_vs_pytorch_fid=<ratio>``; exits 1 if the two distances differ by more than
1e-6 relative.

    python benchmarks/frechet.py [--samples 10000] [--dim 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import threadpoolctl
from pytorch_fid.fid_score import calculate_frechet_distance

from ganops.metrics.frechet import feature_statistics, frechet_distance


def best_of(repeats: int, fn) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Two correlated, shifted feature sets, as real and generated Inception features are.
    mixing = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    real = np.maximum(rng.normal(size=(args.samples, args.dim)) @ mixing, 0)
    fake = np.maximum(rng.normal(size=(args.samples, args.dim)) @ (mixing * 1.05) + 0.01, 0)
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)

    ours_s, ours = best_of(args.repeats, lambda: frechet_distance(mu1, sigma1, mu2, sigma2))
    peer_s, peer = best_of(args.repeats, lambda: calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
    relative = abs(ours - peer) / abs(peer)
    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                             for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}))
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}, BLAS: {blas}")
    print(f"features: {args.samples} x {args.dim}, best of {args.repeats}")
    print(f"ganops frechet_distance:            {ours_s * 1000:9.1f} ms   value {ours:.10f}")
    print(f"pytorch-fid calculate_frechet_distance: {peer_s * 1000:9.1f} ms   value {peer:.10f}")
    print(f"relative difference: {relative:.3e} (limit 1e-6)")
    print(f"frechet_speedup_vs_pytorch_fid={peer_s / ours_s:.2f}")
    return 0 if relative <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
