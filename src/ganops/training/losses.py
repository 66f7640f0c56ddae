"""GAN objectives on discriminator logits, and the gradient penalties.

minimax: Goodfellow et al. 2014. D maximises log D(x) + log(1 - D(G(z))), written with softplus so
it is stable in logits: softplus(-d_real) + softplus(d_fake). G takes the paper's non-saturating
step, maximising log D(G(z)): softplus(-d_fake).
hinge: Lim & Ye 2017 / Miyato et al. 2018. wgan-gp: Gulrajani et al. 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class GANLoss:
    """One objective: the discriminator's loss on (d_real, d_fake) logits, the generator's on d_fake,
    and whether the step must draw interpolation weights for a gradient penalty between real and fake."""

    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]
    penalty_on_interpolates: bool = False


# A new loss is one entry here, and its name in TrainParams.loss (tests/test_losses.py checks they agree).
LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(
        discriminator=lambda d_real, d_fake: F.softplus(-d_real).mean() + F.softplus(d_fake).mean(),
        generator=lambda d_fake: F.softplus(-d_fake).mean(),
    ),
    "hinge": GANLoss(
        discriminator=lambda d_real, d_fake: F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean(),
        generator=lambda d_fake: -d_fake.mean(),
    ),
    "wgan-gp": GANLoss(
        discriminator=lambda d_real, d_fake: d_fake.mean() - d_real.mean(),
        generator=lambda d_fake: -d_fake.mean(),
        penalty_on_interpolates=True,
    ),
}


def discriminator_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return _loss(kind).discriminator(d_real, d_fake)


def generator_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    return _loss(kind).generator(d_fake)


def _loss(kind: str) -> GANLoss:
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")
    return LOSSES[kind]


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
