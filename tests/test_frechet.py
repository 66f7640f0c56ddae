"""Our Fréchet distance against a scipy reference, and KID / precision-recall on known answers."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ganops.config import EvalParams
from ganops.metrics.frechet import feature_statistics, frechet_distance
from ganops.metrics.scores import kid, metric_name, precision_recall


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(("samples", "dim"), [(2000, 64), (1000, 256), (100, 256)])  # the last: singular covariances
def test_matches_scipy_sqrtm(samples, dim):
    rng = np.random.default_rng(dim)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = rng.normal(size=(samples, dim)) @ mixing
    b = rng.normal(size=(samples, dim)) @ (1.2 * mixing) + 0.3
    stats = (*feature_statistics(a), *feature_statistics(b))
    ours, reference = frechet_distance(*stats), scipy_frechet(*stats)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_closed_form_for_diagonal_gaussians():
    # N(0, diag(1, 4)) vs N((3, 0), diag(9, 1)): 9 + (1 - 3)^2 + (2 - 1)^2 = 14
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([3.0, 0.0]), np.diag([9.0, 1.0])) == pytest.approx(14.0)
    assert frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-12)


def test_mismatched_statistics_are_rejected():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))


def unbiased_mmd2_cubic(x: np.ndarray, y: np.ndarray) -> float:
    """MMD² with k(a, b) = (a·b / d + 1)³, unbiased (diagonals left out): the KID estimator."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_is_the_unbiased_cubic_mmd():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 16)), rng.normal(loc=0.5, size=(300, 16))
    # one subset holding every sample: KID is then exactly the unbiased MMD² of the two sets
    cfg = EvalParams(kid_subsets=1, kid_subset_size=300)
    result = kid(torch.from_numpy(real), torch.from_numpy(fake), cfg)
    assert result["kid_mean"] == pytest.approx(unbiased_mmd2_cubic(real, fake), rel=1e-6)
    same = kid(torch.from_numpy(real), torch.from_numpy(rng.normal(size=(300, 16))), EvalParams(kid_subsets=20, kid_subset_size=100))
    assert abs(same["kid_mean"]) < result["kid_mean"] / 20


def test_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(200, 8)))
    far = real[:100] + 1000.0
    cfg = EvalParams(prc_neighborhood=3)
    identical = precision_recall(real, real.clone(), cfg)
    assert identical == {"precision": 1.0, "recall": 1.0}
    disjoint = precision_recall(real, far, cfg)
    assert disjoint == {"precision": 0.0, "recall": 0.0}
    # every real sample copied, plus 100 far-off fakes: 200 of 300 fakes lie on the real manifold
    mixed = precision_recall(real, torch.cat([real, far]), cfg)
    assert mixed["precision"] == pytest.approx(200 / 300)
    assert mixed["recall"] == 1.0


def test_metric_names_carry_the_backbone():
    assert metric_name("fd", "inception") == "fid_inception"
    assert metric_name("fd_ci95_low", "inception") == "fid_inception_ci95_low"
    assert metric_name("fd", "domain") == "fd_domain"
    assert metric_name("kid_mean", "domain") == "kid_domain_mean"
    assert metric_name("precision", "inception") == "precision_inception"
