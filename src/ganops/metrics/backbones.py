"""Feature backbones: images in, one feature vector per image out.

``inception`` is the standard FID network (the TF-ported Inception-v3 that pytorch-fid and
torch-fidelity use), through torch-fidelity's feature extractor, from a local weights file.
``domain`` is the classifier that the train_evaluator stage trains on the prepared data.
Every metric is named after the backbone that produced its features.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

import torch
from tqdm import tqdm

from ganops import GanopsError
from ganops.metrics.evaluator import DomainClassifier, load_evaluator, scale_images

# The file name torch-fidelity downloads (and caches under torch hub's checkpoints folder); it holds
# the same tensors, under the same names, as pytorch-fid's pt_inception-2015-12-05-6726825d.pth.
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FEATURES = "2048"


def default_inception_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME


class Backbone(Protocol):
    name: str

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) on the backbone's device -> float features (N, D)."""


class InceptionBackbone:
    name = "inception"

    def __init__(self, weights: Path, device: torch.device) -> None:
        self.model = load_inception(weights).to(device).eval()

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        if images_u8.shape[1] == 1:  # grayscale data: the network wants RGB
            images_u8 = images_u8.expand(-1, 3, -1, -1)
        (features,) = self.model(images_u8)
        return features


class DomainBackbone:
    name = "domain"

    def __init__(self, model: DomainClassifier) -> None:
        self.model = model

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.model.features(scale_images(images_u8))


def load_inception(weights: Path) -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3 with weights from a local file, read without unpickling code.

    torch-fidelity itself would ``torch.load`` the file with ``weights_only=False``; instead the
    file is read here with ``weights_only=True`` and only the tensors it held are handed on.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise GanopsError(
            f"FID Inception-v3 weights not found: expected the file {weights}. It is the TF-ported FID "
            f"Inception ({INCEPTION_WEIGHTS_NAME}, from the torch-fidelity v0.2.0 release, or pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth, which holds the same tensors). Copy it to that path, or "
            f"point eval.inception_weights at it; eval.backbone: domain works without it."
        )
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise GanopsError(f"{weights} is not a readable weights file: {error}") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise GanopsError(f"{weights} does not hold a state dict of tensors")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    fd, clean_copy = tempfile.mkstemp(suffix=".pth")
    os.close(fd)
    try:
        torch.save(state_dict, clean_copy)  # tensors only: safe for torch-fidelity to load
        try:
            return FeatureExtractorInceptionV3(
                "inception-v3-compat", [INCEPTION_FEATURES], feature_extractor_weights_path=clean_copy
            )
        except RuntimeError as error:  # strict load_state_dict: wrong or missing tensors
            raise GanopsError(f"{weights} is not the FID Inception-v3 layout: {str(error)[:500]}") from None
    finally:
        os.unlink(clean_copy)


def resolve_backbone(requested: str, inception_weights: str | None) -> tuple[str, Path]:
    """auto -> inception when its weights file exists, domain otherwise."""
    weights = Path(inception_weights).expanduser() if inception_weights else default_inception_weights()
    if requested == "auto":
        return ("inception" if weights.is_file() else "domain"), weights
    return requested, weights


def build_backbone(name: str, weights: Path, root: Path, device: torch.device) -> Backbone:
    if name == "inception":
        return InceptionBackbone(weights, device)
    return DomainBackbone(load_evaluator(root, device))


@torch.no_grad()
def extract_features(backbone: Backbone, batches: Iterable[torch.Tensor], total: int, desc: str) -> torch.Tensor:
    """Run uint8 batches through the backbone under no_grad, with a progress bar; float64 on the CPU."""
    features = []
    with tqdm(total=total, desc=f"{desc} [{backbone.name}]", unit="img", mininterval=1.0) as progress:
        for batch in batches:
            features.append(backbone(batch).double().cpu())
            progress.update(len(batch))
    return torch.cat(features)
