"""Feature backbones, the Fréchet distance, KID, precision/recall, and the evaluation stages."""

from ganops.metrics.evaluate import evaluate
from ganops.metrics.evaluator import train_evaluator
from ganops.metrics.frechet import feature_statistics, frechet_distance

__all__ = ["evaluate", "feature_statistics", "frechet_distance", "train_evaluator"]
