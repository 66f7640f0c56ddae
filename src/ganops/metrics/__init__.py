"""Feature backbones, the Fréchet distance, KID, precision/recall, and the evaluation stages."""

from ganops.metrics.evaluate import evaluate
from ganops.metrics.evaluator import train_evaluator
from ganops.metrics.frechet import feature_statistics, frechet_distance
from ganops.metrics.reference import reference_stats

__all__ = ["evaluate", "feature_statistics", "frechet_distance", "reference_stats", "train_evaluator"]
