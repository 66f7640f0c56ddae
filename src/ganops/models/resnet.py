"""Residual networks (``model.arch: resnet``): the ResNet GAN of SNGAN (Miyato et al. 2018, its 32x32
CIFAR networks) in the pre-activation form of BigGAN's blocks (Brock et al. 2019), with the conditional
parts of cGAN practice: conditional batch norm in the generator (each batch norm's gain and bias
looked up per class) and the projection discriminator (Miyato & Koyama 2018: the inner product of a
class embedding with the discriminator's pooled features, added to its logit).

Generator: z -> linear -> 4x4, then one up-block per resolution level up to R (each doubling the side),
then BN-ReLU-conv3x3-tanh. An up-block is BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3 beside a shortcut
that upsamples its input (through a 1x1 conv when the width changes).

Discriminator: a first block at R (conv3x3-ReLU-conv3x3-avgpool, shortcut avgpool-conv1x1), one
down-block per level down to 4x4 (ReLU-conv3x3-ReLU-conv3x3-avgpool, shortcut conv1x1-avgpool), one
block at 4x4 that keeps the size, then ReLU, a sum over positions and a linear head (+ the projection
when conditional). Spectral norm on every layer, embedding included, when ``spec.spectral_norm``.

Widths follow the DCGAN networks' (``channel_widths``): ``g_channels`` one level below full resolution
(the generator's last block keeps it at R), ``d_channels`` after the first block, doubling towards 4x4
up to ``max_channels``. Same interface as ``ganops.models.dcgan``: built from the same specs, called
as ``G(z, labels)`` and ``D(x, labels)``, images in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ganops.models.dcgan import Norm, channel_widths, projected_logits
from ganops.models.spec import DiscriminatorSpec, GeneratorSpec


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UpBlock(nn.Module):
    """BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3 + the upsampled input (1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.norm1 = Norm(c_in, num_classes)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = Norm(c_out, num_classes)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(_upsample(F.relu(self.norm1(x, labels))))
        h = self.conv2(F.relu(self.norm2(h, labels)))
        skip = _upsample(x)
        return h + (self.shortcut(skip) if self.shortcut is not None else skip)


class DownBlock(nn.Module):
    """ReLU-conv3x3-ReLU-conv3x3 (-avgpool) + the input through conv1x1 (-avgpool) when the width or the
    size changes. The first block (on the images) has no leading ReLU and pools before its shortcut conv."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, wrap) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = wrap(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = wrap(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = wrap(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out or down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        skip = x
        if self.first and self.down:
            skip = F.avg_pool2d(skip, 2)
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        if self.down and not self.first:
            skip = F.avg_pool2d(skip, 2)
        return h + skip


class ResNetGenerator(nn.Module):
    """z (N, latent) [+ labels (N,)] -> images (N, C, R, R) in [-1, 1]."""

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        levels = int(math.log2(spec.resolution)) - 2  # up-blocks: 4x4 -> 8x8, ..., R/2 -> R
        widths = channel_widths(spec.g_channels, levels, spec.max_channels)  # at 4x4 ... R/2
        self._width = widths[0]
        self.stem = nn.Linear(spec.latent_dim, widths[0] * 16)
        self.blocks = nn.ModuleList(
            UpBlock(c_in, c_out, spec.num_classes) for c_in, c_out in zip(widths, [*widths[1:], widths[-1]])
        )
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.to_image = nn.Conv2d(widths[-1], spec.channels, 3, 1, 1)
        _init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.conditional and labels is None:
            raise ValueError("this generator is conditional: pass labels")
        h = self.stem(z).view(z.shape[0], self._width, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.to_image(F.relu(self.out_norm(h))))


class ResNetDiscriminator(nn.Module):
    """images (N, C, R, R) [+ labels] -> one logit per image; projection term when conditional."""

    def __init__(self, spec: DiscriminatorSpec) -> None:
        super().__init__()
        self.spec = spec
        levels = int(math.log2(spec.resolution)) - 2
        widths = channel_widths(spec.d_channels, levels, spec.max_channels)[::-1]  # at R/2 ... 4x4
        wrap = spectral_norm if spec.spectral_norm else (lambda module: module)
        self.blocks = nn.ModuleList(
            [DownBlock(spec.channels, widths[0], down=True, first=True, wrap=wrap)]
            + [DownBlock(c_in, c_out, down=True, first=False, wrap=wrap) for c_in, c_out in zip(widths, widths[1:])]
            + [DownBlock(widths[-1], widths[-1], down=False, first=False, wrap=wrap)]
        )
        self.head = wrap(nn.Linear(widths[-1], 1))
        self.embed = wrap(nn.Embedding(spec.num_classes, widths[-1])) if spec.conditional else None
        _init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        return projected_logits(self.head, self.embed, F.relu(h).sum(dim=(2, 3)), labels)


def _init(network: nn.Module) -> None:
    # SNGAN's initialisation: Xavier-uniform, with gain sqrt(2) on the convs inside the residual branches
    # (they feed ReLUs) and gain 1 elsewhere (shortcuts, stem, heads, the class embedding); zero biases.
    # Spectral-norm weights are initialised through .original, as in the DCGAN networks.
    for name, sub in network.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear, nn.Embedding)):
            weight = sub.parametrizations.weight.original if hasattr(sub, "parametrizations") else sub.weight
            branch = name.rsplit(".", 1)[-1] in ("conv1", "conv2")
            nn.init.xavier_uniform_(weight, gain=math.sqrt(2.0) if branch else 1.0)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)
