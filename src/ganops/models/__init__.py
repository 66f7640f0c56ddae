"""Generator and discriminator networks, built from their specs."""

from __future__ import annotations

from ganops.models.dcgan import Discriminator, Generator
from ganops.models.spec import DiscriminatorSpec, GeneratorSpec, SpecError


def build_generator(spec: GeneratorSpec) -> Generator:
    return Generator(spec)


def build_discriminator(spec: DiscriminatorSpec) -> Discriminator:
    return Discriminator(spec)


__all__ = [
    "Discriminator",
    "DiscriminatorSpec",
    "Generator",
    "GeneratorSpec",
    "SpecError",
    "build_discriminator",
    "build_generator",
]
