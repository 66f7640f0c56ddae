"""Metrics on features, as small functions in a registry (the stylegan2-ada way).

Each takes real and generated features (float64, CPU) and the eval params, and returns named
numbers without the backbone suffix; :func:`compute_metrics` adds it, so ``fd`` on Inception
features is reported as ``fid_inception`` and on domain features as ``fd_domain``.
KID and precision/recall are torch-fidelity's own implementations, fed our features.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ganops.config import EvalParams
from ganops.metrics.frechet import frechet_distance_of_features

MetricFn = Callable[[torch.Tensor, torch.Tensor, EvalParams], dict[str, float]]


def fd(real: torch.Tensor, fake: torch.Tensor, cfg: EvalParams) -> dict[str, float]:
    """Fréchet distance, a 95% bootstrap interval over both sample sets, and the distance between
    two random halves of the real set (the floor that no generator can beat at this sample size)."""
    real_np, fake_np = real.numpy(), fake.numpy()
    out = {"fd": frechet_distance_of_features(real_np, fake_np)}
    rng = np.random.default_rng(cfg.seed)
    if cfg.bootstrap > 0:
        rounds = []
        for _ in range(cfg.bootstrap):
            r = real_np[rng.integers(0, len(real_np), len(real_np))]
            f = fake_np[rng.integers(0, len(fake_np), len(fake_np))]
            rounds.append(frechet_distance_of_features(r, f))
        out["fd_ci95_low"], out["fd_ci95_high"] = (float(v) for v in np.percentile(rounds, [2.5, 97.5]))
        out["fd_bootstrap_std"] = float(np.std(rounds, ddof=1)) if len(rounds) > 1 else 0.0
    order = rng.permutation(len(real_np))
    half = len(order) // 2
    out["fd_real_halves"] = frechet_distance_of_features(real_np[order[:half]], real_np[order[half:]])
    return out


def kid(real: torch.Tensor, fake: torch.Tensor, cfg: EvalParams) -> dict[str, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD², cubic kernel, over subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    subset = min(cfg.kid_subset_size, len(real), len(fake))
    result = kid_features_to_metric(fake, real, kid_subsets=cfg.kid_subsets, kid_subset_size=subset,
                                    rng_seed=cfg.seed, verbose=False)
    return {"kid_mean": float(result["kernel_inception_distance_mean"]),
            "kid_std": float(result["kernel_inception_distance_std"])}


def precision_recall(real: torch.Tensor, fake: torch.Tensor, cfg: EvalParams) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds of each set."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    result = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=cfg.prc_neighborhood, verbose=False)
    return {"precision": float(result["precision"]), "recall": float(result["recall"])}


METRICS: dict[str, MetricFn] = {"fd": fd, "kid": kid, "prc": precision_recall}


def metric_name(name: str, backbone: str) -> str:
    # The Fréchet distance on Inception features is what the literature calls FID.
    if backbone == "inception" and (name == "fd" or name.startswith("fd_")):
        name = "fid" + name[2:]
    head, _, tail = name.partition("_")
    return f"{head}_{backbone}" + (f"_{tail}" if tail else "")


def compute_metrics(real: torch.Tensor, fake: torch.Tensor, cfg: EvalParams, backbone: str) -> dict[str, float]:
    results: dict[str, float] = {}
    for fn in METRICS.values():
        for name, value in fn(real, fake, cfg).items():
            results[metric_name(name, backbone)] = round(value, 6)
    return results
