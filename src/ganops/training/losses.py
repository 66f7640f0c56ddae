"""GAN objectives on discriminator logits, and the gradient penalties.

minimax: Goodfellow et al. 2014. D maximises log D(x) + log(1 - D(G(z))), written with softplus so
it is stable in logits: softplus(-d_real) + softplus(d_fake). G takes the paper's non-saturating
step, maximising log D(G(z)): softplus(-d_fake).
hinge: Lim & Ye 2017 / Miyato et al. 2018. wgan-gp: Gulrajani et al. 2017.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F


def discriminator_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    if kind == "minimax":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    if kind == "wgan-gp":
        return d_fake.mean() - d_real.mean()
    raise ValueError(f"unknown loss {kind!r}")


def generator_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    if kind == "minimax":
        return F.softplus(-d_fake).mean()
    if kind in ("hinge", "wgan-gp"):
        return -d_fake.mean()
    raise ValueError(f"unknown loss {kind!r}")


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP: E[(||grad critic(x_hat)|| - 1)^2] at random points between real and fake, mixed
    per sample by ``alpha`` ([N, 1, 1, 1] uniform in [0, 1), drawn by the caller)."""
    mixed = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad D(x)||^2] on real images; ``real`` must require grad."""
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
