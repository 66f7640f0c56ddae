"""Feature backbones: uint8 images in, one feature vector per image out.

``inception`` is the standard FID network (:mod:`ganops.metrics.inception`) under a named FID
protocol; ``domain`` is the domain classifier that the train_evaluator stage trains on the prepared
data. Every metric is named after the feature space of the backbone that computed it
(:mod:`ganops.metrics.names`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from ganops.metrics.domain_classifier import DomainClassifier
from ganops.metrics.inception import InceptionFeatureExtractor, InceptionWeightsError, default_weights_path
from ganops.pixels import from_uint8

log = logging.getLogger(__name__)


class Backbone(Protocol):
    name: str            # "inception" | "domain"
    feature_space: str   # what metric names say: the FID protocol, or "domain"
    native_size: int | None  # the images' centre of this side is what it sees (eval.native_size); None: whole

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float features (N, D)."""


class InceptionBackbone:
    name = "inception"

    def __init__(self, weights: Path, protocol: str, device: torch.device, native_size: int | None = None) -> None:
        self.feature_space, self.native_size = protocol, native_size
        self.extractor = InceptionFeatureExtractor(weights, protocol, device, native_size=native_size)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.extractor(images_u8)


class DomainClassifierBackbone:
    """The domain classifier's penultimate features: the backbone ``domain``."""

    name = "domain"
    feature_space = "domain"
    native_size = None  # trained on the prepared images as they are

    def __init__(self, model: DomainClassifier) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.features(from_uint8(images_u8.to(device)))


def resolve_backbone(requested: str, inception_weights: str | None) -> tuple[str, Path, str | None]:
    """(backbone, weights path, why the domain classifier stands in) — ``auto`` is inception when the
    weights file exists; otherwise domain, with the reason, for the log and the report."""
    weights = Path(inception_weights).expanduser() if inception_weights else default_weights_path()
    if requested == "inception" and not weights.is_file():
        raise InceptionWeightsError(
            f"eval.backbone is 'inception' but the FID Inception weights are not at {weights}: run ./setup.sh (or "
            f"`ganops fid-weights install`), point eval.inception_weights at the file, or set eval.backbone: domain")
    if requested == "auto" and not weights.is_file():
        reason = (f"no FID Inception weights at {weights} (./setup.sh installs them): the domain classifier's "
                  f"features stand in, and no standard FID is reported")
        log.warning("eval.backbone auto: %s", reason)
        return "domain", weights, reason
    return ("inception" if requested == "auto" else requested), weights, None


def iter_features(backbone: Backbone, batches: Iterable[torch.Tensor], total: int, desc: str) -> Iterator[np.ndarray]:
    """Run uint8 batches through the backbone, with a progress bar; float64 (n, D) per batch, on the CPU."""
    with tqdm(total=total, desc=f"{desc} [{backbone.feature_space}]", unit="img", mininterval=1.0) as progress:
        for batch in batches:
            yield backbone(batch).double().cpu().numpy()
            progress.update(len(batch))


def extract_features(backbone: Backbone, batches: Iterable[torch.Tensor], total: int, desc: str) -> np.ndarray:
    """All the features of uint8 batches: float64 (N, D) on the CPU."""
    return np.concatenate(list(iter_features(backbone, batches, total, desc)))
