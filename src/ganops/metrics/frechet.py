"""The Fréchet distance between two Gaussians fitted to features (Heusel et al. 2017).

    d² = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)

pytorch-fid takes the matrix square root of the non-symmetric S1 S2 with scipy's general ``sqrtm``
(a Schur decomposition, in complex arithmetic). Only the trace is needed, and S1 S2 is similar to a
symmetric positive semi-definite matrix: with the Cholesky factor S1 = L Lᵀ, S1 S2 = L (Lᵀ S2 L) L⁻¹,
so tr((S1 S2)^½) = Σ sqrt(eigvalsh(Lᵀ S2 L)). One Cholesky factorisation and one symmetric
eigenvalue solve (no eigenvectors) in float64: several times faster than ``sqrtm`` and the same value
to round-off. A singular S1 (fewer samples than dimensions) has no Cholesky factor; then
A = S1^½ S2 S1^½ from a symmetric eigendecomposition plays the same role.
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); float64 throughout."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    sigma1 = (sigma1 + sigma1.T) / 2
    try:
        factor = np.linalg.cholesky(sigma1)
        inner = factor.T @ sigma2 @ factor
    except np.linalg.LinAlgError:
        root1 = _sqrt_psd(sigma1)
        inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


class FrechetReference:
    """One reference Gaussian, factored once, for many Fréchet distances against it (a training run's
    snapshots, their half-samples).

    With S1 = L Lᵀ and the n generated features centred into X (n, D), S2 = Xᵀ X / (n - 1), so
    Lᵀ S2 L = Yᵀ Y / (n - 1) with Y = X L, whose non-zero eigenvalues are those of the n x n Gram
    matrix Y Yᵀ / (n - 1). With n below D (a few hundred images, 2048 Inception features) that is
    one (n, D) x (D, D) product and an n x n eigenvalue solve instead of D x D ones: the same value
    as :func:`frechet_distance` to round-off (tests/test_frechet.py), at a fraction of the time."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.mu = np.asarray(mu, np.float64)
        sigma = np.asarray(sigma, np.float64)
        sigma = (sigma + sigma.T) / 2
        self.trace = float(np.trace(sigma))
        try:
            self.factor = np.linalg.cholesky(sigma)  # S1 = L Lᵀ
        except np.linalg.LinAlgError:
            self.factor = _sqrt_psd(sigma)  # symmetric: S1 = R Rᵀ as well

    @classmethod
    def of_features(cls, features: np.ndarray) -> FrechetReference:
        """The Gaussian fitted to (n, D) ``features``. With n <= D the centred features themselves are a
        factor: S1 = Fᵀ F with F = (features - mu) / sqrt(n - 1), so L = Fᵀ is (D, n) and nothing is
        factorised (the generated side of a half-sample against 2,000 generated images)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
        n, dim = features.shape
        if n > dim:
            return cls(*feature_statistics(features))
        reference = cls.__new__(cls)
        reference.mu = features.mean(axis=0)
        reference.factor = ((features - reference.mu) / np.sqrt(n - 1)).T
        reference.trace = float(np.einsum("ij,ij->", reference.factor, reference.factor))
        return reference

    def distance(self, features: np.ndarray) -> float:
        """Fréchet distance between the reference and the Gaussian fitted to (n, D) ``features``."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] != self.mu.size:
            raise ValueError(f"need (N >= 2, {self.mu.size}) features, got shape {features.shape}")
        n = features.shape[0]
        mu = features.mean(axis=0)
        centred = (features - mu) @ self.factor  # (n, k): k = D, or the reference's sample count
        gram = centred @ centred.T if n <= centred.shape[1] else centred.T @ centred
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((gram + gram.T) / 2) / (n - 1), 0.0, None)).sum()
        trace2 = float(np.einsum("ij,ij->", features - mu, features - mu)) / (n - 1)
        diff = self.mu - mu
        return float(diff @ diff + self.trace + trace2 - 2.0 * trace_sqrt)
