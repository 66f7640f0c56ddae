"""Metrics on features, as small functions in a registry (the stylegan2-ada way), and
``score_draws``, the one entry point that scores generated images with them.

Each metric takes the reference features, the generated features as a list of seeded draws
(float64, (n_i, D) each) and the eval params, and returns numbers keyed by (metric, suffix);
``compute_metrics`` names them by their measurement (:mod:`ganops.metrics.names`). KID and
precision/recall are torch-fidelity's own implementations, fed our features. The Fréchet distance is
ours (:mod:`ganops.metrics.frechet`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ganops.config import EvalParams
from ganops.metrics.backbones import DomainClassifierBackbone
from ganops.metrics.domain_classifier import classifier_accuracy
from ganops.metrics.draws import RESCORE, WATCH, features_of_draws, generated_draws, sample_labels
from ganops.metrics.frechet import FrechetReference, feature_statistics, frechet_distance
from ganops.metrics.names import Measurement
from ganops.metrics.reference import ReferencedBackbone, ReferenceFeatures

MetricFn = Callable[[ReferenceFeatures, list[np.ndarray], EvalParams], dict[tuple[str, str], float]]
Z95 = 1.959963984540054

SPREAD_METHOD = (
    "half-sampling: the Fréchet distance recomputed on {rounds} random halves of the generated images, each half "
    "made of whole seeded draws ({draws} draws of about {per_draw} images, so every half is itself a fresh draw of "
    "N/2 images), and on {rounds} random halves of the reference split (without replacement); for a half-sample "
    "Var(FD at N) ~ Var(FD at N/2) x (N/2)/(N - N/2), so the two spreads' variances add as they are. "
    "Interval: estimate +- {z:.2f} x std (normal approximation), so it contains the estimate."
)


def half_of_draws(draws: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The features of a random half of the seeded draws, whole draws only (see SPREAD_METHOD)."""
    return np.concatenate([draws[i] for i in rng.choice(len(draws), size=len(draws) // 2, replace=False)])


def fd(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Fréchet distance; its standard deviation and 95% interval by half-sampling (see SPREAD_METHOD);
    and the distance between two halves of the reference split: the floor at this sample size. The
    distances against the whole reference reuse its factor (ReferenceFeatures.frechet); those of the
    reference's halves against all generated images use the generated features as their factor."""
    real, fake = reference.features, np.concatenate(draws)
    value = reference.frechet.distance(fake)  # against the reference factored once (FrechetReference)
    out = {("fd", ""): value}
    rng = np.random.default_rng(cfg.seed)
    half = len(real) // 2
    order = rng.permutation(len(real))
    out[("floor", "")] = frechet_distance(*feature_statistics(real[order[:half]]),
                                          *feature_statistics(real[order[half:]]))
    if cfg.spread_rounds > 0 and len(draws) >= 2:
        generated = FrechetReference.of_features(fake)  # the fixed side of the reference half-samples
        by_generated, by_reference = [], []
        for _ in range(cfg.spread_rounds):
            by_generated.append(reference.frechet.distance(half_of_draws(draws, rng)))
            subset = rng.choice(len(real), size=half, replace=False)
            by_reference.append(generated.distance(real[subset]))
        var_generated, var_reference = float(np.var(by_generated, ddof=1)), float(np.var(by_reference, ddof=1))
        std = math.sqrt(var_generated + var_reference)
        out.update({("fd", "std"): std, ("fd", "std_generated"): math.sqrt(var_generated),
                    ("fd", "std_reference"): math.sqrt(var_reference),
                    ("fd", "ci95_low"): value - Z95 * std, ("fd", "ci95_high"): value + Z95 * std})
    return out


def kid(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD², cubic kernel, over subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = reference.features, np.concatenate(draws)
    subset = min(cfg.kid_subset_size, len(real), len(fake))
    result = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=cfg.kid_subsets,
                                    kid_subset_size=subset, rng_seed=cfg.seed, verbose=False)
    return {("kid", "mean"): float(result["kernel_inception_distance_mean"]),
            ("kid", "std"): float(result["kernel_inception_distance_std"])}


def precision_recall(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds of each set."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    fake = torch.from_numpy(np.concatenate(draws)).float()
    result = prc_features_to_metric(fake, torch.from_numpy(reference.features).float(), prc_neighborhood=cfg.prc_neighborhood,
                                    verbose=False)
    return {("precision", ""): float(result["precision"]), ("recall", ""): float(result["recall"])}


METRICS: dict[str, MetricFn] = {"fd": fd, "kid": kid, "prc": precision_recall}


def compute_metrics(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams, measurement: Measurement,
                    metrics: tuple[str, ...] = tuple(METRICS)) -> dict[str, float]:
    """Every metric in ``metrics``, named by ``measurement``, rounded for the report."""
    results: dict[str, float] = {}
    for key in metrics:
        for (metric, suffix), value in METRICS[key](reference, draws, cfg).items():
            name = measurement.floor_name() if metric == "floor" else measurement.name(metric, suffix)
            results[name] = round(float(value), 6)
    return results


def spread_method(cfg: EvalParams, num_draws: int) -> str:
    return SPREAD_METHOD.format(rounds=cfg.spread_rounds, draws=num_draws, per_draw=cfg.num_samples // num_draws, z=Z95)


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float]  # named by measurement, in the order eval.json lists them
    primary: str               # the primary metric's name


def score_draws(draws: list[torch.Tensor], labels: torch.Tensor | None, backbones: Sequence[ReferencedBackbone],
                cfg: EvalParams) -> Scores:
    """The one scoring entry point: every metric of generated uint8 ``draws`` (as ``generated_draws``
    returns them, with their ``labels`` when the generator is conditional).

    The first backbone is primary and gets every metric in METRICS; each other backbone is a second
    opinion and gets the Fréchet distance only. Each name is built from the backbone that computed
    the features. Conditional draws also get class consistency when the domain classifier is among
    the backbones. Reads only its arguments and loads nothing: the caller builds the backbones and
    their reference features once and hands them to every call."""
    if not backbones:
        raise ValueError("score_draws needs at least one backbone")
    count = sum(len(draw) for draw in draws)
    measurements = [Measurement(b.backbone.name, b.backbone.feature_space, count, cfg.reference) for b in backbones]
    metrics: dict[str, float] = {}
    for index, ((backbone, reference), measurement) in enumerate(zip(backbones, measurements)):
        chosen = tuple(METRICS) if index == 0 else ("fd",)
        metrics.update(compute_metrics(reference, features_of_draws(backbone, draws, cfg.batch_size), cfg,
                                       measurement, chosen))
    for (backbone, _), measurement in zip(backbones, measurements):
        if labels is not None and isinstance(backbone, DomainClassifierBackbone):
            # the share of images the domain classifier assigns to the label they were generated for
            metrics[measurement.name("class_consistency")] = round(
                classifier_accuracy(backbone.model, torch.cat(draws), labels, cfg.batch_size), 6)
    return Scores(metrics, measurements[0].primary)


class SnapshotScorer:
    """Scores snapshots of one training run: the Fréchet distance of ``count`` generated images, in
    ``cfg.draws`` seeded draws, against the primary backbone's reference, and its standard deviation
    over ``cfg.spread_rounds`` half-samples of the draws. Only the generated side is resampled: every
    snapshot of a run is scored against the same reference, so this is the noise in comparing them.
    Each call uses the same seeds (``use``: WATCH in training, RESCORE for the final choice), so
    snapshots differ by their weights only. ``name`` is the metric's, e.g. fid200_tf_train."""

    def __init__(self, backbone: ReferencedBackbone, reference_labels: np.ndarray | None, num_classes: int,
                 count: int, cfg: EvalParams, use: int) -> None:
        self.backbone, self.count, self.cfg, self.use = backbone.backbone, count, cfg, use
        self.name = Measurement(self.backbone.name, self.backbone.feature_space, count, cfg.reference).primary
        self.labels = (sample_labels(reference_labels, count, num_classes, cfg.seed, use)
                       if reference_labels is not None else None)
        self.reference = FrechetReference(backbone.reference.mu, backbone.reference.sigma)

    def __call__(self, generator: torch.nn.Module) -> tuple[float, float]:
        """(distance, std) of ``generator``'s images; std is 0 without half-samples (eval.spread_rounds: 0)."""
        draws = generated_draws(generator, self.labels, self.count, self.cfg.draws, self.cfg.batch_size, self.cfg.seed,
                                next(generator.parameters()).device, self.use)
        features = features_of_draws(self.backbone, draws, self.cfg.batch_size)
        value = self.reference.distance(np.concatenate(features))
        rng = np.random.default_rng([self.cfg.seed, self.use])
        halves = [self.reference.distance(half_of_draws(features, rng)) for _ in range(self.cfg.spread_rounds)]
        return value, float(np.std(halves, ddof=1)) if len(halves) >= 2 else 0.0


def snapshot_scorers(backbone: ReferencedBackbone, reference_labels: np.ndarray | None, num_classes: int, count: int,
                     cfg: EvalParams) -> tuple[SnapshotScorer, SnapshotScorer]:
    """The in-training scorer (``count`` images) and the re-scorer (the full protocol, eval.num_samples
    images), on seeds that neither each other nor the evaluate stage use."""
    return (SnapshotScorer(backbone, reference_labels, num_classes, count, cfg, WATCH),
            SnapshotScorer(backbone, reference_labels, num_classes, cfg.num_samples, cfg, RESCORE))
