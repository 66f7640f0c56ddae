"""The training loop and its parts: the loop, the step, losses, EMA, checkpoints, DDP, the watch and
the run's report. Import the module you need; this package imports nothing."""
