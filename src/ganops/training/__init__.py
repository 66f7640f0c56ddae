"""The training loop and its parts: the step, losses, EMA, checkpoints, DDP."""

from ganops.training.loop import FitResult, fit

__all__ = ["FitResult", "fit"]
