"""Evaluation's parts: feature backbones (Inception, domain), the Fréchet distance, KID and
precision/recall (scores), metric names (names), the eval.json record (report), reference statistics, generated draws.
Import the module you need; this package imports nothing."""
