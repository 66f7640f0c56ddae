"""The statistics of noise, in one place: how far apart two noisy numbers must be before one counts as
lower, and the spreads and intervals that say how noisy a number is.

- ``half_sample_std``: the standard deviation of a Fréchet distance from half-samples (the evaluation's
  overall and per-class intervals, and the in-training score's std).
- ``beyond_noise``: is one number lower than another by more than the noise? The one comparison that
  choosing the shipped snapshot (train.noise_z), the champion gate (register.noise_z and
  register.min_improvement), the per-class gate (at ``bonferroni_z``) and the sweep's ranking all make.
- ``bonferroni_z``: the z of each of several tests made at once, so that together they are wrong as rarely
  as one test at z.
- ``seed_mean``: the mean over training seeds, its standard error and its t interval (a sweep's trial
  trained with several seeds).

Floor 0: the standard library and numpy (scipy for the t quantile, imported where it is used).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: estimate +- Z95 x std is a 95 % interval


def half_sample_std(*groups: Sequence[float]) -> float | None:
    """The standard deviation of an estimate from its half-sample values: the square root of the sum of
    the groups' variances, each numpy's ``np.var(group, ddof=1)`` (each group is one side resampled,
    e.g. the generated images and the reference images; their variances add). None when any group has
    fewer than 2 values (no variance to estimate); the caller says what that means (no interval, or a
    std of 0)."""
    if not groups:
        raise ValueError("half_sample_std needs at least one group of half-sample values")
    if any(len(group) < 2 for group in groups):
        return None
    return math.sqrt(sum(float(np.var(group, ddof=1)) for group in groups))


def noise_threshold(lower_std: float, higher_std: float, z: float, margin: float = 0.0) -> float:
    """How much lower one number must be than another to be lower beyond noise: more than ``margin`` and
    more than ``z`` standard deviations of the difference (the two stds in quadrature). NaN when the
    noise is not a number (a NaN std), so that nothing is beyond it."""
    noise = z * math.hypot(lower_std, higher_std)
    return noise if math.isnan(noise) else max(margin, noise)


def beyond_noise(lower: float, lower_std: float, higher: float, higher_std: float, z: float,
                 margin: float = 0.0) -> bool:
    """Is ``lower`` (with ``lower_std``) below ``higher`` (with ``higher_std``) beyond noise: is
    ``higher - lower`` strictly more than ``noise_threshold(lower_std, higher_std, z, margin)``? A
    difference exactly at the threshold is noise; so is any difference when a std is NaN."""
    return higher - lower > noise_threshold(lower_std, higher_std, z, margin)


def bonferroni_z(z: float, tests: int) -> float:
    """The z of each of ``tests`` tests made at once so that all together are wrong as rarely as one
    test at ``z`` (Bonferroni: the two-sided tail of z shared among the tests). 0 when z <= 0."""
    if z <= 0:
        return 0.0
    tail = 2 * (1 - NormalDist().cdf(z))
    return NormalDist().inv_cdf(1 - tail / (2 * tests))


@dataclass(frozen=True)
class SeedMean:
    """A number measured once per training seed: the mean, its standard error, its 95 % t interval."""

    value: float
    std: float  # the standard error of the mean: the seeds' standard deviation / sqrt(seeds)
    low: float
    high: float


def seed_mean(values: Sequence[float]) -> SeedMean:
    """The mean of ``values`` (one per training seed, at least two), its standard error and the t
    interval of the mean: mean +- t(0.975, seeds - 1) x standard error."""
    if len(values) < 2:
        raise ValueError(f"a mean over seeds needs at least two values, got {len(values)}")
    value = statistics.fmean(values)
    std = statistics.stdev(values) / math.sqrt(len(values))
    from scipy.stats import t  # imported here: the ground floor's other users need no scipy

    half = float(t.ppf(0.975, len(values) - 1)) * std
    return SeedMean(value, std, value - half, value + half)
