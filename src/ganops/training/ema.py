"""Exponential moving average of the generator's weights (Karras et al.; Yazici et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(target: float, steps_averaged: int) -> float:
    """The decay for one update: 0 (a plain copy) before the EMA starts, then ramping up as
    (1 + t) / (10 + t) towards ``target``, so early weights don't linger in a short run."""
    if steps_averaged < 0:
        return 0.0
    return min(target, (1.0 + steps_averaged) / (10.0 + steps_averaged))


@torch.no_grad()
def update_ema(model: nn.Module, ema: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    # foreach: a handful of fused kernels instead of one per tensor (it matters on GPUs)
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))
