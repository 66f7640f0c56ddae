"""GAN objectives on discriminator logits, and the gradient penalties.

minimax: Goodfellow et al. 2014. D maximises log D(x) + log(1 - D(G(z))), written with softplus so
it is stable in logits: softplus(-d_real) + softplus(d_fake). G takes the paper's non-saturating
step, maximising log D(G(z)): softplus(-d_fake).
hinge: Lim & Ye 2017 / Miyato et al. 2018. wgan-gp: Gulrajani et al. 2017.
rpgan: the relativistic pairing GAN (Jolicoeur-Martineau 2019), as R3GAN uses it (Huang et al., "The GAN
is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024): each real image is paired with the
generated image at the same place of the batch, and L_D = E[f(D(fake) - D(real))], L_G =
E[f(D(real) - D(fake))] with f = softplus (f(t) = -log sigmoid(-t)). Unlike the others, the generator's
loss reads D on the real batch too (``GANLoss.generator_reads_real``). R3GAN regularises it with
zero-centred gradient penalties on both sides: R1 at the real images and R2 at the generated ones,
gamma/2 * E||grad_x D(x)||^2 each (``r1_penalty``, ``r2_penalty``); the entry declares R2
(``GANLoss.penalty_on_fakes``), weighted by train.r1_gamma as R1 is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class GANLoss:
    """One objective: the discriminator's loss on (d_real, d_fake) logits, the generator's on d_fake
    (on (d_fake, d_real) when ``generator_reads_real``: D's logits on the real batch, the same size and
    order as the fakes, carrying no gradient), whether the step must draw interpolation weights for a
    gradient penalty between real and fake (``penalty_on_interpolates``), and whether the step adds
    R2, the zero-centred penalty at the generated images, weighted by train.r1_gamma like R1 at the
    real ones (``penalty_on_fakes``)."""

    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[..., torch.Tensor]
    penalty_on_interpolates: bool = False
    generator_reads_real: bool = False
    penalty_on_fakes: bool = False


def _paired(d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
    if d_real.shape != d_fake.shape:
        raise ValueError(f"rpgan pairs each real image with one generated image: logits of shapes "
                         f"{tuple(d_real.shape)} and {tuple(d_fake.shape)}")


def rpgan_discriminator(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E[softplus(D(fake) - D(real))] over the pairs (real i, fake i)."""
    _paired(d_real, d_fake)
    return F.softplus(d_fake - d_real).mean()


def rpgan_generator(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """E[softplus(D(real) - D(fake))] over the pairs; D(real) is a constant here (detached)."""
    _paired(d_real, d_fake)
    return F.softplus(d_real.detach() - d_fake).mean()


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
    "rpgan": GANLoss(
        discriminator=rpgan_discriminator,
        generator=rpgan_generator,
        generator_reads_real=True,
        penalty_on_fakes=True,
    ),
}


def discriminator_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return _loss(kind).discriminator(d_real, d_fake)


def generator_loss(kind: str, d_fake: torch.Tensor, d_real: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's loss on D's logits for its images; ``d_real`` (D's logits on the paired real
    batch) is required by the losses that read it (``generator_reads_real``) and ignored by the others."""
    loss = _loss(kind)
    if not loss.generator_reads_real:
        return loss.generator(d_fake)
    if d_real is None:
        raise ValueError(f"the {kind} generator loss compares each generated image with a real one: pass d_real, "
                         "D's logits on the real batch")
    return loss.generator(d_fake, d_real)


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
    return _zero_centred(d_real, real)


def r2_penalty(d_fake: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """R2 (Mescheder et al. 2018; R3GAN's second penalty): E[||grad D(x)||^2] on generated images, the
    same zero-centred penalty as R1 at the other side. ``fake`` must be a detached leaf that requires
    grad (the penalty trains D, not G); the step weights it by r1_gamma / 2 as it does R1."""
    return _zero_centred(d_fake, fake)


def _zero_centred(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(d_out.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
