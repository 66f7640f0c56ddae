"""The generator the benchmarks measure: the trained one when present, else the params.yaml
architecture with seeded random weights (speed does not depend on the weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ganops.config import Params
from ganops.data.prepare import Manifest
from ganops.data.shards import split_index, write_shard
from ganops.models import Generator, build_generator, load_generator
from ganops.models.spec import GeneratorSpec


def benchmark_generator(params: Params) -> tuple[Generator, str]:
    if Path("models/generator.safetensors").exists() and Path("models/generator.json").exists():
        return load_generator(Path("models/generator.safetensors"), Path("models/generator.json")), "models/generator.safetensors"
    torch.manual_seed(0)
    spec = GeneratorSpec(latent_dim=params.model.latent_dim, g_channels=params.model.g_channels,
                         max_channels=params.model.max_channels, resolution=params.data.resolution,
                         channels=params.data.channels, num_classes=10 if params.model.conditional else 0)
    return build_generator(spec).eval(), "params.yaml architecture, random weights"


def write_random_prepared(root: Path, images: np.ndarray, num_classes: int = 1) -> None:
    """A prepared data set of the given uint8 images (labels cycle through the classes), in the
    layout the prepare stage writes (one shard per split), for benchmarks that need no real data."""
    folder = root / "data" / "prepared"
    folder.mkdir(parents=True)
    labels = np.arange(len(images), dtype=np.int64) % num_classes
    names = [str(i) for i in range(num_classes)]
    files = {split: split_index([write_shard(folder, split, 0, images, labels)], len(images), images.shape[1:])
             for split in ("train", "test")}
    manifest = Manifest(source="random", source_checksum="-", resolution=images.shape[2], channels=images.shape[1],
                        num_classes=num_classes, class_names=names, num_train=len(images), num_test=len(images),
                        files=files)
    (folder / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
