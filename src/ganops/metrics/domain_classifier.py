"""The domain classifier: a small CNN trained on the prepared training split.

Offline there are no Inception weights, so evaluation can use this network's penultimate features
instead (the backbone and metric names then say ``domain``). Its classifier head also scores class
consistency: how often a conditional generator's images are classified as the label they were
generated for.

"evaluator" in user-visible names means this network: the train_evaluator stage trains it, into
models/evaluator.safetensors and models/evaluator.json (its spec), with reports/evaluator.json (its
accuracy), under the params eval.evaluator. Those names stay; in code it is the domain classifier.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save
from torch import nn
from tqdm import tqdm

from ganops import GanopsError
from ganops.config import EvaluatorParams
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.pixels import from_uint8

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest


class DomainClassifierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: int
    channels: int
    num_classes: int = Field(ge=2)
    width: int = Field(ge=1)
    class_names: list[str]
    data_checksum: str

    @property
    def feature_dim(self) -> int:
        return 4 * self.width


class DomainClassifier(nn.Module):
    """Three conv blocks and global average pooling: any resolution, features of 4 x width."""

    def __init__(self, spec: DomainClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.channels, spec.width, 2 * spec.width, 4 * spec.width]
        blocks = []
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(spec.feature_dim, spec.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, C, H, W) -> penultimate features (N, 4 x width)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_domain_classifier(weights: Path, spec_path: Path, device: torch.device) -> DomainClassifier:
    if not weights.exists() or not spec_path.exists():
        raise GanopsError(f"{weights} is missing; train the domain classifier first (`dvc repro train_evaluator`)")
    spec = DomainClassifierSpec.model_validate(json.loads(spec_path.read_text()))
    model = DomainClassifier(spec)
    model.load_state_dict(load_file(weights))
    return model.to(device).eval()


@torch.no_grad()
def classifier_hits(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> np.ndarray:
    """Whether the classifier assigns each uint8 image to its label (bool (N,)); batches go to the model's device."""
    device = next(model.parameters()).device
    model.eval()
    hits = [(model(from_uint8(images[start : start + batch_size].to(device))).argmax(1)
             == labels[start : start + batch_size].to(device)).cpu().numpy() for start in range(0, len(images), batch_size)]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def classifier_accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Share of uint8 images the classifier assigns to their label."""
    hits = classifier_hits(model, images, labels, batch_size)
    return float(hits.mean()) if len(hits) else 0.0


def save_domain_classifier(model: DomainClassifier, weights_path: Path, spec_path: Path) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(weights_path, safetensors_save(weights))
    write_json_atomic(spec_path, model.spec.model_dump(mode="json"))


class SplitReader(Protocol):
    """A prepared split read on demand (ganops.data.shards.PreparedSplit)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def gather(self, indices: np.ndarray) -> np.ndarray: ...

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


def _split_accuracy(model: DomainClassifier, split: SplitReader, batch_size: int) -> float | None:
    if not len(split):
        return None
    correct = sum(classifier_accuracy(model, torch.from_numpy(images), torch.from_numpy(labels), batch_size) * len(labels)
                  for images, labels in split.batches(batch_size))
    return round(correct / len(split), 5)


def fit_domain_classifier(cfg: EvaluatorParams, manifest: Manifest, train: SplitReader, test: SplitReader,
                  device: torch.device) -> tuple[DomainClassifier, dict]:
    """Train the domain classifier on the ``train`` split, a batch read at a time; report its accuracy
    on ``test``."""
    if manifest.num_classes < 2:
        raise GanopsError("the domain classifier needs at least 2 classes; use eval.backbone: inception")
    torch.manual_seed(cfg.seed)
    spec = DomainClassifierSpec(resolution=manifest.resolution, channels=manifest.channels,
                         num_classes=manifest.num_classes, width=cfg.width, class_names=manifest.class_names,
                         data_checksum=manifest.checksum("train"))
    model = DomainClassifier(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    train_labels = torch.from_numpy(train.labels)
    started = time.perf_counter()
    for _epoch in tqdm(range(cfg.epochs), desc="train_evaluator", unit="epoch"):
        model.train()
        order = torch.randperm(len(train), generator=order_rng)
        for step in range(steps_per_epoch):
            index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            images = torch.from_numpy(train.gather(index.numpy())).to(device)
            loss = nn.functional.cross_entropy(model(from_uint8(images)), train_labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    report = {
        "test_accuracy": _split_accuracy(model, test, 512),
        "train_accuracy": _split_accuracy(model, train, 512),
        "num_test": int(len(test)),
        "epochs": cfg.epochs,
        "feature_dim": spec.feature_dim,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    logging.getLogger(__name__).info("domain classifier: test accuracy %s", report["test_accuracy"])
    return model, report
