"""The one conversion between generator outputs in [-1, 1] and 8-bit pixels.

It works on torch tensors and numpy arrays alike: the serving path has no tensors, training has no
arrays."""

from __future__ import annotations

import numpy as np


def to_uint8(images):
    """Values in [-1, 1] -> uint8 of the same layout (rounded half to even, clipped); a torch tensor
    stays a tensor on its own device, a numpy array stays an array."""
    if isinstance(images, np.ndarray):
        return np.rint((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(dtype=_torch_uint8())


def from_uint8(images):
    """uint8 pixels -> float32 in [-1, 1] (a new tensor or array)."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return images.float().div_(127.5).sub_(1.0)


def _torch_uint8():
    import torch

    return torch.uint8
