"""The metrics beyond one FID, on synthetic features where the answer is known: per class,
density/coverage (prdc's), FD-infinity, memorisation, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganops.config import EvalParams
from ganops.latents import check_truncation, truncate
from ganops.metrics import neighbours
from ganops.metrics.evaluation import score_draws
from ganops.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from ganops.metrics.names import Measurement
from ganops.metrics.neighbours import neighbour_summary
from ganops.metrics.reference import ReferencedBackbone, ReferenceFeatures
from ganops.metrics.scores import METRICS, density_coverage, fd_inf, memorisation, per_class

MEASURED = Measurement("inception", "tf", 600, "train")


def reference_of(features: np.ndarray, labels: np.ndarray | None = None) -> ReferenceFeatures:
    return ReferenceFeatures(features, *feature_statistics(features), {}, labels)


def split_into_draws(features: np.ndarray, labels: np.ndarray, draws: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    bounds = np.linspace(0, len(features), draws + 1).round().astype(int)
    return ([features[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
            [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])])


def test_per_class_distance_is_each_class_against_its_own_reference_and_finds_the_broken_class():
    rng = np.random.default_rng(0)
    dim, classes = 8, 3
    centres = rng.normal(0, 3, (classes, dim))
    real_labels = np.repeat(np.arange(classes), 200)
    real = centres[real_labels] + rng.normal(size=(len(real_labels), dim))
    fake_labels = rng.integers(0, classes, 600)
    fake = centres[fake_labels] + rng.normal(size=(600, dim))
    fake[fake_labels == 1] += 2.0  # class 1 is broken: shifted by 2 in every feature
    draws, draw_labels = split_into_draws(fake, fake_labels, 6)
    cfg = EvalParams(num_samples=600, draws=6, spread_rounds=8)
    metrics = per_class(reference_of(real, real_labels), draws, draw_labels, cfg, MEASURED)

    for index in range(classes):  # the plain Fréchet distance of the class's two sets
        expected = frechet_distance_of_features(real[real_labels == index], fake[fake_labels == index])
        assert metrics[f"fid600_tf_train_class{index}"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        low, high = metrics[f"fid600_tf_train_class{index}_ci95_low"], metrics[f"fid600_tf_train_class{index}_ci95_high"]
        assert low < metrics[f"fid600_tf_train_class{index}"] < high
        assert 0.0 <= metrics[f"precision600_tf_train_class{index}"] <= 1.0
    assert metrics["fid600_tf_train_class1"] > 20 > 3 > max(metrics["fid600_tf_train_class0"],
                                                            metrics["fid600_tf_train_class2"])
    assert metrics["fid600_tf_train_class1"] - metrics["fid600_tf_train_class0"] > 4 * metrics["fid600_tf_train_class1_std"]
    assert metrics["ifid600_tf_train"] == pytest.approx(np.mean([metrics[f"fid600_tf_train_class{i}"] for i in range(3)]),
                                                        abs=1e-5)
    # a class too small to measure is left out, and with it the mean over classes
    few = fake_labels.copy()
    few[np.flatnonzero(few == 2)[3:]] = 0
    sparse = per_class(reference_of(real, real_labels), *split_into_draws(fake, few, 6), cfg, MEASURED)
    assert "fid600_tf_train_class2" not in sparse and "ifid600_tf_train" not in sparse
    assert "fid600_tf_train_class0" in sparse


@pytest.mark.parametrize("k", [1, 3, 5])
def test_density_and_coverage_equal_prdcs_and_the_radii_are_its_too(k, monkeypatch):
    import prdc.prdc
    from prdc import compute_prdc

    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(1300, 16)), rng.normal(0.3, 1.2, size=(1100, 16))
    monkeypatch.setattr(neighbours, "BLOCK", 256)  # several blocks on each side
    ours = neighbour_summary(real, fake, k)
    expected = compute_prdc(real.astype(np.float32), fake.astype(np.float32), k)
    assert ours.density == pytest.approx(expected["density"], abs=1e-12)
    assert ours.coverage == pytest.approx(expected["coverage"], abs=1e-12)
    radii = prdc.prdc.compute_nearest_neighbour_distances(real.astype(np.float32), k)
    assert np.allclose(ours.radius, radii, rtol=1e-5)
    assert np.allclose(ours.own_nearest, prdc.prdc.compute_nearest_neighbour_distances(real.astype(np.float32), 1),
                       rtol=1e-5)
    full = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))
    assert np.array_equal(ours.fake_nearest_index, full.argmin(1)) and np.allclose(ours.fake_nearest, full.min(1))
    assert density_coverage(ours) == {("density", ""): ours.density, ("coverage", ""): ours.coverage}


def test_fd_inf_recovers_the_known_frechet_distance_of_two_gaussians():
    # The reference is the exact Gaussian (its true mean and covariance), so only the generated side has
    # finite-N bias; the distance at N is biased upwards by about c / N and FD-infinity removes it.
    rng = np.random.default_rng(2)
    dim = 64
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    mu1, sigma1 = np.zeros(dim), np.eye(dim)
    mu2, sigma2 = np.full(dim, 0.05), a @ a.T + 0.5 * np.eye(dim)
    truth = frechet_distance(mu1, sigma1, mu2, sigma2)
    reference = ReferenceFeatures(rng.normal(size=(10, dim)), mu1, sigma1, {})
    errors_inf, errors_at_n = [], []
    for seed in range(5):
        fake = np.random.default_rng([seed, 9]).multivariate_normal(mu2, sigma2, size=2000)
        draws = np.split(fake, 10)
        cfg = EvalParams(num_samples=2000, fid_inf_points=5, seed=seed)
        errors_inf.append(fd_inf(reference, draws, cfg)[("fd_inf", "")] - truth)
        errors_at_n.append(reference.frechet.distance(fake) - truth)
    # measured on these seeds (truth 11.51): at N = 2000 the distance is 0.35-0.93 too high (mean 0.53),
    # FD-infinity within 0.27 on every seed (mean -0.12): the stated tolerance is 0.3, 2.6 % of the truth
    assert np.mean(errors_at_n) > 0.4 and min(errors_at_n) > 0.3
    assert max(map(abs, errors_inf)) < 0.3
    assert abs(np.mean(errors_inf)) < np.mean(errors_at_n) / 2


def test_memorisation_flags_a_generator_that_returns_training_images_and_not_fresh_draws():
    rng = np.random.default_rng(3)
    training = rng.normal(size=(1000, 16))
    cfg = EvalParams(reference="train", memorisation_quantile=0.01, memorisation_max_share=0.05)
    reference = reference_of(training)
    copies = training[rng.choice(1000, 400, replace=False)] + rng.normal(0, 1e-3, (400, 16))
    fresh = rng.normal(size=(400, 16))  # the same distribution, not the same images
    copied, copied_pairs = memorisation(neighbour_summary(reference.features, copies, 5), cfg, MEASURED)
    honest, _ = memorisation(neighbour_summary(reference.features, fresh, 5), cfg, MEASURED)
    assert copied["memorised600_tf_train_share"] == 1.0 > cfg.memorisation_max_share
    assert honest["memorised600_tf_train_share"] < cfg.memorisation_max_share
    # the closest pairs point at the training images they copy
    assert np.abs(copies[copied_pairs.generated] - training[copied_pairs.training]).max() < 1e-2
    assert list(copied_pairs.distances) == sorted(copied_pairs.distances)


class PixelBackbone:
    name, feature_space, native_size = "inception", "tf", None

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return images_u8.double().flatten(1)


def test_score_draws_suspects_memorisation_of_copied_training_images_only_against_the_training_split():
    rng = np.random.default_rng(4)
    training = torch.from_numpy(rng.integers(0, 256, (300, 1, 4, 4), dtype=np.uint8))
    backbone = PixelBackbone()
    reference = reference_of(backbone(training).numpy())
    copies = [training[i * 30 : (i + 1) * 30] for i in range(4)]
    cfg = EvalParams(num_samples=120, draws=4, spread_rounds=0, kid_subsets=5, kid_subset_size=20)
    scores = score_draws(copies, None, [ReferencedBackbone(backbone, reference)], cfg, METRICS.values())
    assert scores.metrics["memorised120_tf_train_share"] == 1.0 and scores.nearest.share == 1.0
    assert list(scores.nearest.training) == list(np.flatnonzero(np.isin(np.arange(300), range(120)))[
        scores.nearest.generated])  # each copy's neighbour is its own original
    fresh = [torch.from_numpy(rng.integers(0, 256, (30, 1, 4, 4), dtype=np.uint8)) for _ in range(4)]
    assert score_draws(fresh, None, [ReferencedBackbone(backbone, reference)], cfg, METRICS.values()).nearest.share < 0.05
    test_split = score_draws(copies, None, [ReferencedBackbone(backbone, reference)],
                             EvalParams(**{**cfg.model_dump(), "reference": "test"}), METRICS.values())
    assert test_split.nearest is None and not any(name.startswith("memorised") for name in test_split.metrics)


def test_truncation_redraws_exactly_the_values_beyond_psi():
    z = np.random.default_rng(5).standard_normal((2000, 32), dtype=np.float32)
    truncated = truncate(z, 0.7, np.random.default_rng(6))
    inside = np.abs(z) <= 0.7
    assert np.abs(truncated).max() <= 0.7
    assert np.array_equal(truncated[inside], z[inside]) and not np.array_equal(truncated[~inside], z[~inside])
    # a standard normal truncated to [-0.7, 0.7]: its std is 0.3854 (closed form)
    assert truncated.std() == pytest.approx(0.3854, abs=0.005)
    assert truncate(z, None, np.random.default_rng(6)) is z
    assert np.array_equal(truncate(z, 0.7, np.random.default_rng(6)), truncated)  # seeded
    for bad in (0.0, -1.0, 0.01, 11.0, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="truncation must be a number from 0.05 to 10"):
            check_truncation(bad)
