"""The generator the benchmarks measure: the trained one when present, else the params.yaml
architecture with seeded random weights (speed does not depend on the weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from ganops.config import Params
from ganops.models import Generator, build_generator, load_trained_generator
from ganops.models.spec import GeneratorSpec


def benchmark_generator(params: Params) -> tuple[Generator, str]:
    if Path("models/generator.safetensors").exists() and Path("models/generator.json").exists():
        return load_trained_generator(), "models/generator.safetensors"
    torch.manual_seed(0)
    spec = GeneratorSpec(latent_dim=params.model.latent_dim, g_channels=params.model.g_channels,
                         max_channels=params.model.max_channels, resolution=params.data.resolution,
                         channels=params.data.channels, num_classes=10 if params.model.conditional else 0)
    return build_generator(spec).eval(), "params.yaml architecture, random weights"
