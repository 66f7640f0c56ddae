"""DCGAN-family networks (Radford et al. 2016), with the conditional parts of cGAN practice:
conditional batch norm in the generator and a projection discriminator (Miyato & Koyama 2018)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganops.models.spec import DiscriminatorSpec, GeneratorSpec


def channel_widths(base: int, levels: int, cap: int) -> list[int]:
    """Channel widths from the 4x4 level outwards: ``base`` at the widest level, doubling inwards."""
    return [min(base * 2 ** (levels - 1 - i), cap) for i in range(levels)]


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are looked up per class (de Vries et al. 2017)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.scale = nn.Embedding(num_classes, num_features)
        self.shift = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class Norm(nn.Module):
    """Plain batch norm, or conditional batch norm when the network has classes (DCGAN's and ResNet's G)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.inner = (
            ConditionalBatchNorm2d(num_features, num_classes) if num_classes else nn.BatchNorm2d(num_features)
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.inner(x, labels) if isinstance(self.inner, ConditionalBatchNorm2d) else self.inner(x)


class Generator(nn.Module):
    """z (N, latent) [+ labels (N,)] -> images (N, C, R, R) in [-1, 1]."""

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        levels = int(math.log2(spec.resolution)) - 2  # 4x4 up to R/2 x R/2
        widths = channel_widths(spec.g_channels, levels, spec.max_channels)
        self.stem = nn.Linear(spec.latent_dim, widths[0] * 16, bias=False)
        self.stem_norm = Norm(widths[0], spec.num_classes)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False) for c_in, c_out in zip(widths, widths[1:])
        )
        self.norms = nn.ModuleList(Norm(c, spec.num_classes) for c in widths[1:])
        self.to_image = nn.ConvTranspose2d(widths[-1], spec.channels, 4, 2, 1)
        self._widths = widths
        _dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.conditional and labels is None:
            raise ValueError("this generator is conditional: pass labels")
        h = self.stem(z).view(z.shape[0], self._widths[0], 4, 4)
        h = torch.relu(self.stem_norm(h, labels))
        for up, norm in zip(self.ups, self.norms):
            h = torch.relu(norm(up(h), labels))
        return torch.tanh(self.to_image(h))


class Discriminator(nn.Module):
    """images (N, C, R, R) [+ labels] -> one logit per image; projection term when conditional."""

    def __init__(self, spec: DiscriminatorSpec) -> None:
        super().__init__()
        self.spec = spec
        levels = int(math.log2(spec.resolution)) - 2  # R down to 4x4
        widths = channel_widths(spec.d_channels, levels, spec.max_channels)[::-1]
        wrap = spectral_norm if spec.spectral_norm else (lambda module: module)
        channels_in = [spec.channels] + widths[:-1]
        self.downs = nn.ModuleList(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1)) for c_in, c_out in zip(channels_in, widths))
        features = widths[-1] * 16
        self.head = wrap(nn.Linear(features, 1))
        self.embed = wrap(nn.Embedding(spec.num_classes, features)) if spec.conditional else None
        _dcgan_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for down in self.downs:
            h = nn.functional.leaky_relu(down(h), 0.2)
        return projected_logits(self.head, self.embed, h.flatten(1), labels)


def projected_logits(head: nn.Module, embed: nn.Module | None, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """D's logit of pooled features ``h``, plus the projection of the class embedding on them
    (Miyato & Koyama 2018) when the discriminator is conditional."""
    logits = head(h).squeeze(1)
    if embed is not None:
        if labels is None:
            raise ValueError("this discriminator is conditional: pass labels")
        logits = logits + (embed(labels) * h).sum(dim=1)
    return logits


def _dcgan_init(module: nn.Module) -> None:
    # DCGAN's N(0, 0.02) init; parametrized (spectral-norm) weights are initialised through .original.
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = sub.parametrizations.weight.original if hasattr(sub, "parametrizations") else sub.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.BatchNorm2d) and sub.affine:
            nn.init.normal_(sub.weight, 1.0, 0.02)
            nn.init.zeros_(sub.bias)
