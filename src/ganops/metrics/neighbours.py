"""Nearest-neighbour distances between feature sets, in bounded memory: what density/coverage
(Naeem et al. 2020) and the memorisation check read.

The ``prdc`` package computes density and coverage from the full distance matrices, made by
scikit-learn (which alone takes seconds to import), all in memory at once. ``neighbour_summary``
computes the same quantities a block of rows at a time with torch's ``cdist`` in float64, and gives
the memorisation check its nearest training images from the same pass; tests/test_quality_metrics.py
holds density and coverage equal to prdc's own on random features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 1024  # rows per block: a block of distances is BLOCK x len(real) float64


@dataclass(frozen=True)
class NeighbourSummary:
    own_nearest: np.ndarray     # each real point's distance to its nearest other real point
    radius: np.ndarray          # each real point's distance to its k-th nearest other real point
    fake_nearest: np.ndarray    # each fake point's distance to its nearest real point ...
    fake_nearest_index: np.ndarray  # ... and which one
    density: float
    coverage: float


def _distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows, columns)  # float64 through a matrix product: round-off far below feature spacings


def neighbour_summary(real: np.ndarray, fake: np.ndarray, k: int) -> NeighbourSummary:
    """Distances between (N, D) ``real`` and (M, D) ``fake`` features: the real points' nearest and
    k-th nearest other real point (prdc's radii: the (k+1)-th smallest distance, counting the point
    itself), the fake points' nearest real point, and density (the mean number of real radii-balls a
    fake point falls in, over k) and coverage (the share of real points with a fake point inside
    their ball), as prdc defines them."""
    real_t, fake_t = torch.from_numpy(np.asarray(real, np.float64)), torch.from_numpy(np.asarray(fake, np.float64))
    smallest = min(k + 1, len(real_t))
    own, radius = [], []
    for start in range(0, len(real_t), BLOCK):
        nearest = torch.topk(_distances(real_t[start : start + BLOCK], real_t), smallest, largest=False).values
        own.append(nearest[:, min(1, smallest - 1)])
        radius.append(nearest[:, -1])
    own_t, radius_t = torch.cat(own), torch.cat(radius)
    fake_nearest, fake_index, inside = [], [], torch.zeros((), dtype=torch.float64)
    covered = torch.full((len(real_t),), float("inf"), dtype=torch.float64)
    for start in range(0, len(fake_t), BLOCK):
        block = _distances(fake_t[start : start + BLOCK], real_t)
        values, indices = block.min(dim=1)
        fake_nearest.append(values)
        fake_index.append(indices)
        inside = inside + (block < radius_t[None, :]).sum()
        covered = torch.minimum(covered, block.min(dim=0).values)
    return NeighbourSummary(own_t.numpy(), radius_t.numpy(), torch.cat(fake_nearest).numpy(),
                            torch.cat(fake_index).numpy(), float(inside) / (k * len(fake_t)),
                            float((covered < radius_t).double().mean()))
