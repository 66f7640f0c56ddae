"""The statistics of noise (ganops.noise), each rule checked at its boundary: the half-sample std,
"beyond noise" (the one comparison of the shipped snapshot, the champion and per-class gates and the
sweep's ranking), the Bonferroni z and the t interval of a mean over seeds."""

from __future__ import annotations

import math
import statistics
from statistics import NormalDist

import numpy as np
import pytest

from ganops.noise import Z95, beyond_noise, bonferroni_z, half_sample_std, noise_threshold, seed_mean


def test_z95_is_the_normal_quantile_of_a_two_sided_95_percent_interval():
    assert Z95 == pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-15)  # scipy's norm.ppf(0.975), as written


# --- the half-sample std --------------------------------------------------------------------------------


def test_the_half_sample_std_adds_the_groups_variances_by_hand():
    # [1, 2, 3, 4]: mean 2.5, squares 2.25 + 0.25 + 0.25 + 2.25 = 5 over 3; [2, 4]: 1 + 1 = 2 over 1
    assert half_sample_std([1.0, 2.0, 3.0, 4.0], [2.0, 4.0]) == pytest.approx(math.sqrt(5 / 3 + 2), rel=1e-15)
    assert half_sample_std([1.0, 3.0]) == math.sqrt(2.0)  # one group: its own std (ddof=1)
    assert half_sample_std([4.0, 4.0, 4.0]) == 0.0 and half_sample_std([4.0, 4.0], [7.0, 7.0]) == 0.0


def test_fewer_than_two_values_in_any_group_give_no_std():
    assert half_sample_std([5.0]) is None and half_sample_std([]) is None
    assert half_sample_std([1.0, 2.0], [3.0]) is None and half_sample_std([3.0], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="^half_sample_std needs at least one group of half-sample values$"):
        half_sample_std()


def test_the_half_sample_std_is_bit_for_bit_the_arithmetic_it_replaces():
    """metrics/scores.py's three computations as they were written: fd and per_class (two groups),
    SnapshotScorer (one group, numpy's std)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        generated, reference = (list(rng.normal(30, 3, rng.integers(2, 12)) * 10.0 ** rng.integers(-2, 3))
                                for _ in range(2))
        two = math.sqrt(float(np.var(generated, ddof=1)) + float(np.var(reference, ddof=1)))
        assert half_sample_std(generated, reference) == two
        assert half_sample_std(generated) == math.sqrt(float(np.var(generated, ddof=1)))
        assert half_sample_std(generated) == float(np.std(generated, ddof=1))


# --- beyond noise ---------------------------------------------------------------------------------------


def test_an_exact_tie_is_never_beyond_noise():
    assert not beyond_noise(10.0, 0.0, 10.0, 0.0, 1.96)
    assert not beyond_noise(10.0, 0.0, 10.0, 0.0, 0.0)
    assert not beyond_noise(10.0, 1.0, 10.0, 1.0, 0.0)


def test_with_zero_noise_any_difference_counts():
    assert beyond_noise(math.nextafter(10.0, 0.0), 0.0, 10.0, 0.0, 1.96)
    assert beyond_noise(9.0, 3.0, 10.0, 4.0, 0.0)  # z 0: the stds do not matter
    assert not beyond_noise(10.0, 0.0, math.nextafter(10.0, 0.0), 0.0, 1.96)  # the other way round: higher


def test_the_threshold_is_z_stds_of_the_difference_strictly():
    # stds 3 and 4: the difference's std is hypot(3, 4) = 5; at z = 2 the bar is exactly 10
    assert noise_threshold(3.0, 4.0, 2.0) == 10.0
    assert not beyond_noise(20.0, 3.0, 30.0 - 1e-9, 4.0, 2.0)  # one side: below the bar
    assert not beyond_noise(20.0, 3.0, 30.0, 4.0, 2.0)  # exactly at it: noise
    assert beyond_noise(20.0, 3.0, 30.0 + 1e-9, 4.0, 2.0)  # the other side: beyond
    assert beyond_noise(20.0, 4.0, 30.0 + 1e-9, 3.0, 2.0) and not beyond_noise(20.0, 4.0, 30.0, 3.0, 2.0)
    assert not beyond_noise(20.0, 0.0, 30.0 - 1e-9, 5.0, 2.0)  # one std alone counts in full


def test_without_a_margin_the_threshold_is_the_noise_alone_however_small():
    assert noise_threshold(0.0, 0.0, 1.96) == 0.0
    assert noise_threshold(0.3, 0.4, 1.0) == pytest.approx(0.5, rel=1e-15)  # below 1: no margin of 1 either
    assert beyond_noise(10.0, 0.3, 10.6, 0.4, 1.0)


def test_the_margin_takes_over_when_it_is_above_the_noise():
    assert noise_threshold(3.0, 4.0, 2.0, margin=12.0) == 12.0
    assert not beyond_noise(20.0, 3.0, 32.0, 4.0, 2.0, margin=12.0)  # at the margin: not beyond
    assert beyond_noise(20.0, 3.0, 32.0 + 1e-9, 4.0, 2.0, margin=12.0)
    assert not beyond_noise(20.0, 3.0, 30.0, 4.0, 2.0, margin=5.0)  # a margin below the noise lowers nothing
    assert beyond_noise(20.0, 0.0, 20.5, 0.0, 1.96, margin=0.25) and not beyond_noise(20.0, 0.0, 20.25, 0.0, 1.96, margin=0.25)


def test_a_std_that_is_not_a_number_is_never_beyond_noise():
    assert math.isnan(noise_threshold(math.nan, 1.0, 2.0, margin=1.0))
    assert not beyond_noise(0.0, math.nan, 100.0, 1.0, 2.0)
    assert not beyond_noise(0.0, 1.0, 100.0, math.nan, 2.0, margin=1.0)


# --- the Bonferroni z -----------------------------------------------------------------------------------


def test_the_bonferroni_z_of_one_test_is_z_and_rises_with_tests():
    assert bonferroni_z(1.96, 1) == pytest.approx(1.96, rel=1e-12)
    assert bonferroni_z(Z95, 10) == pytest.approx(2.807033768343811, rel=1e-9)  # the normal's 1 - 0.05 / 20
    zs = [bonferroni_z(1.96, tests) for tests in (1, 2, 10, 100)]
    assert zs == sorted(zs) and zs[1] > 1.96 + 0.2
    assert bonferroni_z(0.0, 10) == 0.0


def test_the_bonferroni_z_is_zero_at_and_below_zero_and_a_real_test_just_above():
    assert bonferroni_z(0.0, 3) == 0.0 and bonferroni_z(-1.0, 3) == 0.0
    assert bonferroni_z(1.0, 1) == pytest.approx(1.0, rel=1e-12)  # a z of 1 or below is still a test
    assert bonferroni_z(0.5, 2) == pytest.approx(NormalDist().inv_cdf(1 - (1 - NormalDist().cdf(0.5)) / 2), rel=1e-12)
    assert 0.0 < bonferroni_z(1e-6, 1) == pytest.approx(1e-6, rel=1e-6)


# --- the t interval of a mean over seeds ----------------------------------------------------------------


def test_the_seed_mean_by_hand_with_the_t_table():
    values = [59.6, 63.3, 61.0]
    mean = seed_mean(values)
    assert mean.value == statistics.fmean(values)
    assert mean.std == statistics.stdev(values) / math.sqrt(3)  # the standard error of the mean
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * mean.std  # t(0.975, 2 degrees of freedom), in closed form: 4.303
    assert (mean.low, mean.high) == pytest.approx((mean.value - half, mean.value + half), rel=1e-14)
    two = seed_mean([1.0, 3.0])  # t(0.975, 1) = 12.706, the std of the mean 1
    assert (two.value, two.std) == (2.0, 1.0) and two.high - two.value == pytest.approx(math.tan(0.475 * math.pi), rel=1e-14)


def test_a_single_seed_has_no_interval_and_equal_seeds_a_zero_one():
    with pytest.raises(ValueError, match="at least two"):
        seed_mean([5.0])
    same = seed_mean([5.0, 5.0, 5.0])
    assert (same.value, same.std, same.low, same.high) == (5.0, 0.0, 5.0, 5.0)
