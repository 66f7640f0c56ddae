"""Evaluation's parts, one module each. Backbones turn images into features: the FID Inception network
and the domain classifier. ``scores.score_draws`` is the one scoring entry point. The other modules
hold the Fréchet distance, metric names, the eval.json record, reference statistics and generated
draws. Import the module you need; this package imports nothing."""
