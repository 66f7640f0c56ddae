"""Generated images for evaluation: seeded draws from a generator, labels with the reference's class
frequencies, and the draws' features."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ganops import GanopsError
from ganops.latents import truncate
from ganops.metrics.backbones import Backbone, extract_features
from ganops.models import Generator, GeneratorSpec
from ganops.pixels import to_uint8

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest


def check_compatible(spec: GeneratorSpec, manifest: Manifest) -> None:
    made = (spec.resolution, spec.channels)
    held = (manifest.resolution, manifest.channels)
    if made != held:
        raise GanopsError(
            f"the generator makes {made[0]}x{made[0]} images with {made[1]} channel(s) but data/prepared holds "
            f"{held[0]}x{held[0]} with {held[1]}; re-run `dvc repro train` after changing the data"
        )
    if spec.conditional and spec.num_classes != manifest.num_classes:
        raise GanopsError(
            f"the generator knows {spec.num_classes} classes but data/prepared has {manifest.num_classes}"
        )


# What generated images are for. Each use draws its own seeds, so no two of them ever score the same
# images: the evaluate stage; in-training evaluations (the same seeds at every snapshot); re-scoring
# the kept snapshots at the end of training; the truncation curve.
EVALUATE, WATCH, RESCORE, TRUNCATE = 0, 1, 2, 3


def _entropy(seed: int, use: int, *more: int) -> list[int]:
    return [seed, *more] if use == EVALUATE else [seed, *more, use]  # EVALUATE keeps the seeds it always had


def sample_labels(reference_labels: np.ndarray, count: int, num_classes: int, seed: int, use: int = EVALUATE) -> torch.Tensor:
    """Labels for generated images, drawn with the reference set's class frequencies."""
    frequencies = np.bincount(reference_labels, minlength=num_classes).astype(np.float64)
    rng = np.random.default_rng(seed if use == EVALUATE else _entropy(seed, use))
    return torch.from_numpy(rng.choice(num_classes, size=count, p=frequencies / frequencies.sum()))


def draw_seed(seed: int, draw: int, use: int = EVALUATE) -> int:
    """The noise seed of one draw: distinct for every (eval.seed, draw, use)."""
    return int(np.random.SeedSequence(_entropy(seed, use, draw)).generate_state(1)[0])


def generated_draws(generator: Generator, labels: torch.Tensor | None, count: int, draws: int, batch_size: int,
                    seed: int, device: torch.device, use: int = EVALUATE,
                    truncation: float | None = None) -> list[torch.Tensor]:
    """``count`` uint8 images in ``draws`` seeded draws of (nearly) equal size; the noise is drawn on the
    CPU so every device sees the same z. ``truncation``: the latents truncated to ±psi
    (ganops.latents.truncate), the same z before truncation as without it."""
    bounds = np.linspace(0, count, draws + 1).round().astype(int)
    out = []
    for draw, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        noise = torch.Generator().manual_seed(draw_seed(seed, draw, use))
        redraws = np.random.default_rng(draw_seed(seed, draw, use))
        images = []
        for start in range(first, last, batch_size):
            n = min(batch_size, last - start)
            z = torch.randn(n, generator.spec.latent_dim, generator=noise)
            z = torch.from_numpy(truncate(z.numpy(), truncation, redraws)).to(device)
            y = labels[start : start + n].to(device) if labels is not None else None
            with torch.no_grad():
                floats = generator(z, y)
            if not torch.isfinite(floats).all():  # to_uint8 would make them plausible black pixels
                raise GanopsError(f"the generator's images for draw {draw} hold NaN or infinite values: "
                                  "nothing to score")
            images.append(to_uint8(floats).cpu())
        out.append(torch.cat(images))
    return out


def features_of_draws(backbone: Backbone, draws: list[torch.Tensor], batch_size: int) -> list[np.ndarray]:
    """The backbone's features of each draw: float64 (n_i, D) each, run in batches of ``batch_size``."""
    total = sum(len(d) for d in draws)
    flat = extract_features(backbone, (d[i : i + batch_size] for d in draws for i in range(0, len(d), batch_size)),
                            total, "generated")
    bounds = np.cumsum([0] + [len(d) for d in draws])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def half_of_draws(draws: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The features of a random half of the seeded draws, whole draws only: each half is itself a fresh
    draw of about half the images (the half-sampling of ganops.noise.half_sample_std)."""
    return np.concatenate([draws[i] for i in rng.choice(len(draws), size=len(draws) // 2, replace=False)])
