"""The in-training score: what the train stage hands the loop to watch its snapshots and to re-score
the kept ones at the end. Goes through the same evaluation seam as the evaluate stage
(``ganops.metrics.evaluation``) with a registry of one entry, and imports none of the evaluate-only
metrics: editing those does not make DVC retrain."""

from __future__ import annotations

import numpy as np
import torch

from ganops.metrics.draws import RESCORE, WATCH, half_of_draws
from ganops.metrics.evaluation import Evaluation, Found, Metric, Scored
from ganops.noise import half_sample_std


def _distance_of_snapshot(scored: Scored) -> Found:
    """The Fréchet distance, and its std over eval.spread_rounds half-samples of the draws. Only the
    generated side is resampled: every snapshot of a run is scored against the same reference, so this
    is the noise in comparing them."""
    reference, features, cfg = scored.reference.frechet, scored.features, scored.cfg
    value = reference.distance(np.concatenate(features))
    rng = np.random.default_rng([cfg.seed, scored.plan.use])
    halves = [reference.distance(half_of_draws(features, rng)) for _ in range(cfg.spread_rounds)]
    std = half_sample_std(halves)
    name = scored.measurement.primary
    return Found({name: value, f"{name}_std": 0.0 if std is None else std})


SNAPSHOT_METRICS = (Metric(_distance_of_snapshot),)


class SnapshotScorer:
    """Scores snapshots of one training run: ``count`` generated images in eval.draws seeded draws,
    against the primary backbone's reference. Each call draws with the same seeds (``use``: WATCH in
    training, RESCORE for the final choice), so snapshots differ by their weights only. ``name`` is
    the metric's, e.g. fid200_tf_train."""

    def __init__(self, evaluation: Evaluation, count: int, use: int) -> None:
        self.evaluation, self.plan = evaluation, evaluation.plan(count, use)
        self.name = evaluation.measurement(count).primary

    def __call__(self, generator: torch.nn.Module) -> tuple[float, float]:
        """(distance, std) of ``generator``'s images; std is 0 without half-samples (eval.spread_rounds: 0)."""
        metrics = self.evaluation.score(generator, SNAPSHOT_METRICS, self.plan).metrics
        return metrics[self.name], metrics[f"{self.name}_std"]


def snapshot_scorers(evaluation: Evaluation, count: int) -> tuple[SnapshotScorer, SnapshotScorer]:
    """The in-training scorer (``count`` images, train.eval_samples) and the re-scorer (the full
    protocol, eval.num_samples images), on seeds that neither each other nor the evaluate stage use."""
    return SnapshotScorer(evaluation, count, WATCH), SnapshotScorer(evaluation, evaluation.cfg.num_samples, RESCORE)
