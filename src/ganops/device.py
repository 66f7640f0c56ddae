"""Device resolution, in one place, naming the config key that asked for the device."""

from __future__ import annotations

import torch

from ganops import GanopsError


def resolve_device(requested: str, key: str) -> torch.device:
    """auto -> CUDA when present, else the CPU; an explicit 'cuda' without a GPU is an error naming ``key``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise GanopsError(f"{key} is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
