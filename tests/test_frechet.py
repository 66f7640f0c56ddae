"""Our Fréchet distance against a scipy reference, and KID / precision-recall on known answers."""

import numpy as np
import pytest
import scipy.linalg

from ganops.config import EvalParams
from ganops.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from ganops.metrics.names import Measurement
from ganops.metrics.reference import ReferenceFeatures
from ganops.metrics.report import EvaluationReport
from ganops.metrics.scores import fd, kid, precision_recall


def ref(features) -> ReferenceFeatures:
    features = np.asarray(features, dtype=np.float64)
    return ReferenceFeatures(features, *feature_statistics(features), {})


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
    result = kid(ref(real), [fake], cfg)
    assert result[("kid", "mean")] == pytest.approx(unbiased_mmd2_cubic(real, fake), rel=1e-6)
    same = kid(ref(real), [rng.normal(size=(300, 16))], EvalParams(kid_subsets=20, kid_subset_size=100))
    assert abs(same[("kid", "mean")]) < result[("kid", "mean")] / 20


def test_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    far = real[:100] + 1000.0
    cfg = EvalParams(prc_neighborhood=3)
    identical = precision_recall(ref(real), [real.copy()], cfg)
    assert identical == {("precision", ""): 1.0, ("recall", ""): 1.0}
    disjoint = precision_recall(ref(real), [far], cfg)
    assert disjoint == {("precision", ""): 0.0, ("recall", ""): 0.0}
    # every real sample copied, plus 100 far-off fakes: 200 of 300 fakes lie on the real manifold
    mixed = precision_recall(ref(real), [real, far], cfg)
    assert mixed[("precision", "")] == pytest.approx(200 / 300)
    assert mixed[("recall", "")] == 1.0


def test_fd_interval_contains_the_estimate_and_its_std_matches_fresh_samples():
    """The half-sampling std against the real spread of the estimate over independent fresh samples."""
    rng = np.random.default_rng(0)
    dim, n_real, n_fake, draws = 8, 1000, 600, 10
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)

    def real_set():
        return rng.normal(size=(n_real, dim)) @ mixing

    def fake_draws():  # a "generator" that is off in mean and scale
        return [rng.normal(loc=0.3, scale=1.3, size=(n_fake // draws, dim)) @ mixing for _ in range(draws)]

    cfg = EvalParams(num_samples=n_fake, draws=draws, spread_rounds=40, seed=1)
    fresh = [fd(ref(real_set()), fake_draws(), cfg)[("fd", "")] for _ in range(60)]
    true_std = float(np.std(fresh, ddof=1))
    estimates = [fd(ref(real_set()), fake_draws(), cfg) for _ in range(8)]
    for out in estimates:
        assert out[("fd", "ci95_low")] < out[("fd", "")] < out[("fd", "ci95_high")]
        assert out[("fd", "std")] ** 2 == pytest.approx(out[("fd", "std_generated")] ** 2 + out[("fd", "std_reference")] ** 2)
    median_std = float(np.median([out[("fd", "std")] for out in estimates]))
    assert true_std / 2 < median_std < true_std * 2, (median_std, true_std)
    # the old bootstrap's failure: resampling with replacement biases FD upward; half-sampling has no such shift
    assert abs(np.mean([out[("fd", "")] for out in estimates]) - np.mean(fresh)) < 2 * true_std


def test_fd_against_the_factored_reference_equals_the_unfactored_distances():
    """fd's distances to the whole reference use its cached factor (the Gram path: fewer generated
    images than dimensions, as 2,000 images in 2,048 Inception features): the same numbers as
    frechet_distance on the same half-samples, drawn with the same seeded calls."""
    from ganops.metrics.draws import half_of_draws

    rng = np.random.default_rng(3)
    dim = 256
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = rng.normal(size=(1200, dim)) @ mixing
    draws = [rng.normal(loc=0.2, scale=1.2, size=(20, dim)) @ mixing for _ in range(10)]
    cfg = EvalParams(num_samples=200, draws=10, spread_rounds=6, seed=5)
    out = fd(ref(real), draws, cfg)
    real_stats, fake = feature_statistics(real), np.concatenate(draws)
    assert out[("fd", "")] == pytest.approx(frechet_distance(*real_stats, *feature_statistics(fake)), rel=1e-6)
    draw_rng = np.random.default_rng(cfg.seed)
    draw_rng.permutation(len(real))  # the floor's split
    by_generated, by_reference = [], []
    for _ in range(cfg.spread_rounds):
        by_generated.append(frechet_distance(*real_stats, *feature_statistics(half_of_draws(draws, draw_rng))))
        subset = draw_rng.choice(len(real), size=len(real) // 2, replace=False)
        by_reference.append(frechet_distance(*feature_statistics(real[subset]), *feature_statistics(fake)))
    assert out[("fd", "std_generated")] == pytest.approx(float(np.std(by_generated, ddof=1)), rel=1e-5)
    assert out[("fd", "std_reference")] == pytest.approx(float(np.std(by_reference, ddof=1)), rel=1e-5)


def test_metric_names_carry_the_measurement():
    standard = Measurement("inception", "tf", 2000, "train")
    assert standard.primary == "fid2k_tf_train"
    assert standard.name("fd", "ci95_low") == "fid2k_tf_train_ci95_low"
    assert standard.name("kid", "mean") == "kid2k_tf_train_mean"
    assert standard.floor_name() == "fid_real_halves_tf_train"
    assert Measurement("inception", "clean", 50000, "test").primary == "fid50k_clean_test"
    domain = Measurement("domain", "domain", 1500, "train")
    assert domain.primary == "fd1500_domain_train"
    assert domain.name("precision") == "precision1500_domain_train"


def test_an_evaluation_report_reads_its_primary_metric_by_name():
    report = EvaluationReport.model_validate({
        "backbone": "inception", "num_samples": 2000, "draws": 10, "reference": "train", "num_reference": 4500,
        "generator_sha256": "sha256:x", "primary_metric": "fid2k_tf_train", "interval_method": "half-sampling",
        "fid_protocol": "tf", "weights_digest": "a008", "fid2k_tf_train": 20.7, "fid2k_tf_train_std": 0.5,
        "fid2k_tf_train_ci95_low": 19.7, "fid2k_tf_train_ci95_high": 21.8, "fid_real_halves_tf_train": 5.4,
        "kid2k_tf_train_mean": 0.01, "fd2k_domain_train": 0.4})
    assert report.measurement == Measurement("inception", "tf", 2000, "train")
    assert (report.value, report.std, report.ci95) == (20.7, 0.5, (19.7, 21.8))
    summary = report.summary()
    assert summary["real_halves_floor"] == 5.4 and summary["kid_mean"] == 0.01 and summary["precision"] is None
    assert summary["protocol"]["weights_digest"] == "a008" and summary["ci95"] == [19.7, 21.8]


@pytest.mark.parametrize(("reference", "generated", "dim"), [(3000, 300, 512), (3000, 1000, 64), (200, 150, 256)])
def test_a_factored_reference_gives_the_same_distance(reference, generated, dim):
    """FrechetReference (the Gram-matrix path for fewer samples than dimensions, the D x D path else,
    and a singular reference) equals frechet_distance, which equals scipy's sqrtm above. To 1e-6
    relative: the D x D path sums the square roots of its D - n round-off "zero" eigenvalues (about
    1e-7 each), which the n x n path does not have, and a singular reference's square root adds its own."""
    from ganops.metrics.frechet import FrechetReference

    rng = np.random.default_rng(generated)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = rng.normal(size=(reference, dim)) @ mixing
    fake = rng.normal(size=(generated, dim)) @ (1.3 * mixing) + 0.2
    factored = FrechetReference(*feature_statistics(real))
    expected = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    assert factored.distance(fake) == pytest.approx(expected, rel=1e-6)
    assert factored.distance(real[:generated]) == pytest.approx(frechet_distance_of_features(real, real[:generated]),
                                                                rel=1e-6)
    # the other way round: a reference fitted to the generated features (their own factor when n <= D)
    assert FrechetReference.of_features(fake).distance(real) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="features"):
        factored.distance(fake[:, :-1])
