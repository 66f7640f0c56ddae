"""Exponential moving average of the generator's weights (Karras et al.; Yazici et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_ema(model: nn.Module, ema: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
