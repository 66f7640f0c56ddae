"""Generator and discriminator networks, built from their specs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ganops import GanopsError
from ganops.models.dcgan import Discriminator, Generator
from ganops.models.resnet import ResNetDiscriminator, ResNetGenerator
from ganops.models.spec import Arch, DiscriminatorSpec, GeneratorSpec, SpecError

# Each arch (spec.arch, from model.arch) names its two networks; building one draws the same random
# numbers as calling its class directly (a DCGAN of a given seed has the weights it always had).
GENERATORS: dict[str, type[nn.Module]] = {"dcgan": Generator, "resnet": ResNetGenerator}
DISCRIMINATORS: dict[str, type[nn.Module]] = {"dcgan": Discriminator, "resnet": ResNetDiscriminator}


def build_generator(spec: GeneratorSpec) -> Generator | ResNetGenerator:
    """The generator ``spec`` describes: z (N, latent) [+ labels (N,)] -> images (N, C, R, R) in [-1, 1]."""
    return GENERATORS[spec.arch](spec)


def build_discriminator(spec: DiscriminatorSpec) -> Discriminator | ResNetDiscriminator:
    """The discriminator ``spec`` describes: images (N, C, R, R) [+ labels (N,)] -> one logit per image."""
    return DISCRIMINATORS[spec.arch](spec)


def load_generator(weights: Path, spec_path: Path,
                   device: torch.device = torch.device("cpu")) -> Generator | ResNetGenerator:
    """A trained generator from its safetensors weights, rebuilt from its spec file (never from params.yaml)."""
    spec = GeneratorSpec.load(spec_path)
    if not weights.exists():
        raise GanopsError(f"{weights} is missing; train a generator first (`dvc repro train`)")
    generator = build_generator(spec)
    try:
        tensors = load_file(weights)
        generator.load_state_dict(tensors)
    except Exception as error:
        raise GanopsError(f"{weights} does not match {spec_path}: {error}") from None
    broken = next((name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()),
                  None)
    if broken is not None:
        raise GanopsError(f"{weights}: the tensor {broken} holds NaN or infinite values; a generator with non-finite "
                          "weights is refused (retrain it: `dvc repro train`)")
    return generator.to(device).eval()


__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "Arch",
    "Discriminator",
    "DiscriminatorSpec",
    "Generator",
    "GeneratorSpec",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "SpecError",
    "build_discriminator",
    "build_generator",
    "load_generator",
]
