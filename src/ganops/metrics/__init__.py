"""Evaluation's parts, one module each. Backbones turn images into features: the FID Inception network
and the domain classifier. ``evaluation`` is the seam every scoring goes through (``open_evaluation``,
``score_draws``); ``scores`` holds the evaluate stage's metrics registry and eval.json's writing,
``snapshot`` the in-training score. The other modules hold the Fréchet distance, metric names, the
eval.json record, reference statistics and generated draws. Import the module you need; this package imports nothing."""
