"""Losses, EMA, checkpoints and the training loop."""

from ganops.training.loop import train

__all__ = ["train"]
