"""Generator and discriminator networks, built from their specs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ganops import GanopsError
from ganops.models.dcgan import Discriminator, Generator
from ganops.models.spec import DiscriminatorSpec, GeneratorSpec, SpecError
from ganops.paths import ProjectPaths


def build_generator(spec: GeneratorSpec) -> Generator:
    return Generator(spec)


def build_discriminator(spec: DiscriminatorSpec) -> Discriminator:
    return Discriminator(spec)


def load_trained_generator(root: Path = Path("."), device: torch.device = torch.device("cpu")) -> Generator:
    """The EMA generator from models/, rebuilt from its spec (never from params.yaml)."""
    paths = ProjectPaths(root)
    spec = GeneratorSpec.load(paths.generator_spec)
    if not paths.generator_weights.exists():
        raise GanopsError(f"{paths.generator_weights} is missing; train a generator first (`dvc repro train`)")
    generator = build_generator(spec)
    try:
        generator.load_state_dict(load_file(paths.generator_weights))
    except Exception as error:
        raise GanopsError(f"{paths.generator_weights} does not match {paths.generator_spec}: {error}") from None
    return generator.to(device).eval()


__all__ = [
    "Discriminator",
    "DiscriminatorSpec",
    "Generator",
    "GeneratorSpec",
    "SpecError",
    "build_discriminator",
    "build_generator",
    "load_trained_generator",
]
