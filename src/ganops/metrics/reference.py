"""The reference statistics: the reference split's FID Inception features and their mean and
covariance, in one folder (written by the reference_stats stage, read by evaluate).

Computed once per dataset, FID protocol and weights, and reused by every evaluation. The record beside
the arrays says exactly what they were computed from, and evaluate refuses statistics that do not
match what it would compute itself. ``referenced_backbones`` pairs each backbone an evaluation
scores with to its reference features, primary first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import torch

from ganops import GanopsError
from ganops.io import atomic_dir
from ganops.metrics.backbones import Backbone, DomainClassifierBackbone, InceptionBackbone, iter_features, resolve_backbone
from ganops.metrics.domain_classifier import DomainClassifier, load_domain_classifier
from ganops.metrics.frechet import FrechetReference, feature_statistics

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest

log = logging.getLogger(__name__)
RECORD = "reference.json"
FEATURES = "features.npy"
STATISTICS = "statistics.npz"


@dataclass(frozen=True)
class ReferenceFeatures:
    features: np.ndarray  # float64 (N, D)
    mu: np.ndarray
    sigma: np.ndarray
    record: dict
    labels: np.ndarray | None = None  # int64 (N,): each kept feature's class, for the per-class metrics

    @cached_property
    def frechet(self) -> FrechetReference:
        """The reference Gaussian factored once, for every Fréchet distance against it."""
        return FrechetReference(self.mu, self.sigma)


class ReferencedBackbone(NamedTuple):
    """A backbone and the reference split's features through it: computed once, scored against many times."""

    backbone: Backbone
    reference: ReferenceFeatures


@dataclass(frozen=True)
class ReferenceRecord:
    """What the reference statistics depend on: the head of data/reference/reference.json, and what
    an evaluation checks before reusing them (all but ``weights``, the file they were read from)."""

    backbone: str  # "inception", or "domain" when Inception's weights are not installed
    reference: str  # the split
    data_sha256: str  # the split's checksum (ganops.data.prepare.Manifest.checksum)
    max_features: int
    fallback_reason: str | None = None  # why the domain classifier stands in for Inception
    fid_protocol: str | None = None  # inception only, as are the two below
    weights: str | None = None
    weights_digest: str | None = None
    native_size: int | None = None  # inception: the images' centre of this side is what it sees

    def as_dict(self) -> dict:
        """The fields that apply to its backbone, in the order reference.json lists them (native_size
        only when set)."""
        own = ("fid_protocol", "weights", "weights_digest") if self.backbone == "inception" else ("fallback_reason",)
        fields = ("backbone", "reference", "data_sha256", "max_features", *own)
        sized = {"native_size": self.native_size} if self.native_size is not None else {}
        return {**{key: getattr(self, key) for key in fields}, **sized}


def resolve_reference(backbone_name: str, inception_weights: str | None, fid_protocol: str, reference: str,
                      device: torch.device, manifest: Manifest, max_features: int,
                      native_size: int | None = None) -> tuple[ReferenceRecord, InceptionBackbone | None]:
    """What the reference statistics depend on (and what evaluate checks before reusing them), and for
    the inception backbone the network itself: loaded once, its weights digest read off it."""
    name, weights, fallback = resolve_backbone(backbone_name, inception_weights)
    record = ReferenceRecord(name, reference, manifest.checksum(reference), max_features)
    if name != "inception":
        return dataclasses.replace(record, fallback_reason=fallback), None
    backbone = InceptionBackbone(weights, fid_protocol, device, native_size)
    return dataclasses.replace(record, fid_protocol=fid_protocol, weights=str(weights),
                               weights_digest=backbone.extractor.weights_digest, native_size=native_size), backbone


class SplitReader(Protocol):
    """A prepared split read on demand (ganops.data.shards.PreparedSplit)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


def split_features(backbone: Backbone, split: SplitReader, batch_size: int, max_features: int,
                   desc: str) -> ReferenceFeatures:
    """The backbone's features of a split, read a batch at a time, in memory that does not grow with
    the split. Up to ``max_features`` images every feature is kept, with their exact mean and
    covariance; beyond, the mean and covariance are accumulated over every image (float64 sums,
    shifted by the first batch's mean) and the features of a seeded subset of ``max_features``
    images are kept for what needs features (KID, precision/recall, the half-sample spreads)."""
    count = len(split)
    subsample = count > max_features
    keep = kept_mask(count, max_features)
    kept, shift, total, outer, start = [], None, None, None, 0
    batches = (torch.from_numpy(images) for images, _ in split.batches(batch_size))
    for features in iter_features(backbone, batches, count, desc):
        kept.append(features[keep[start : start + len(features)]])
        start += len(features)
        if subsample:
            shift = features.mean(axis=0) if shift is None else shift
            centred = features - shift
            total = centred.sum(axis=0) if total is None else total + centred.sum(axis=0)
            outer = centred.T @ centred if outer is None else outer + centred.T @ centred
    features = np.concatenate(kept)
    if not subsample:
        mu, sigma = feature_statistics(features)
    else:
        mean = total / count
        mu, sigma = shift + mean, (outer - count * np.outer(mean, mean)) / (count - 1)
    record = {"num_reference": count, "num_reference_features": int(len(features))}
    return ReferenceFeatures(features, mu, sigma, record, np.asarray(split.labels)[keep].astype(np.int64))


def kept_mask(count: int, max_features: int) -> np.ndarray:
    """Which of a split's ``count`` images keep their features (bool (count,)): all of them up to
    ``max_features``, else a seeded subset of that size."""
    keep = np.zeros(count, dtype=bool)
    # which images' features are kept is a property of the data, not of an evaluation: a fixed seed
    keep[np.random.default_rng(0).choice(count, max_features, replace=False) if count > max_features else slice(None)] = True
    return keep


def write_reference(folder: Path, expected: ReferenceRecord, backbone: InceptionBackbone | None,
                    split: SplitReader | None, batch_size: int, max_features: int) -> dict:
    """Write ``folder``: the record, and for the inception backbone the features of the reference
    ``split`` (all of them, or a seeded subset of ``max_features``) and their statistics (over all of
    them); returns the record."""
    record, reference = expected.as_dict(), None
    if backbone is not None:
        reference = split_features(backbone, split, batch_size, max_features, f"reference ({record['reference']})")
        record.update(reference.record)
        record["engine"] = backbone.extractor.engine
    with atomic_dir(folder) as tmp:
        if reference is not None:
            np.save(tmp / FEATURES, reference.features.astype(np.float32), allow_pickle=False)
            np.savez(tmp / STATISTICS, mu=reference.mu, sigma=reference.sigma, count=np.int64(len(reference.features)))
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("reference statistics (%s): %s", record["backbone"],
             f"{record.get('num_reference')} images of the {record['reference']} split" if reference is not None
             else record["fallback_reason"])
    return record


def referenced_backbones(inception: ReferencedBackbone | None, classifier: DomainClassifier | None,
                         split: SplitReader, split_name: str, batch_size: int, max_features: int) -> list[ReferencedBackbone]:
    """The backbones an evaluation scores with, primary first: the FID Inception network with its
    cached reference when its weights are installed; the domain classifier beside it as a second
    opinion, or alone, with its features of the reference ``split`` computed here."""
    backbones = [inception] if inception is not None else []
    if classifier is not None:
        domain = DomainClassifierBackbone(classifier)
        reference = split_features(domain, split, batch_size, max_features, f"real ({split_name})")
        backbones.append(ReferencedBackbone(domain, reference))
    return backbones


def open_backbones(expected: ReferenceRecord, inception: InceptionBackbone | None, reference_folder: Path,
                   classifier_files: tuple[Path, Path], split: SplitReader, split_name: str, batch_size: int,
                   max_features: int, device: torch.device, primary_only: bool = False) -> list[ReferencedBackbone]:
    """The backbones to score with, primary first (see ``referenced_backbones``): the FID Inception
    network with the reference_stats stage's cached statistics in ``reference_folder``, checked
    against ``expected``, and the domain classifier from ``classifier_files`` (weights, spec) when it
    was trained. ``primary_only``: the first alone (the classifier is not loaded beside Inception)."""
    weights, spec = classifier_files
    if inception is None and not weights.exists():
        raise GanopsError(f"the domain classifier ({weights}) is missing: run `dvc repro train_evaluator`")
    cached = None
    if inception is not None:
        reference = load_reference(reference_folder, expected)
        labels = split.labels[kept_mask(len(split), max_features)].astype(np.int64)  # the cached features' order
        cached = ReferencedBackbone(inception, dataclasses.replace(reference, labels=labels))
    if cached is not None and primary_only:
        return [cached]
    classifier = load_domain_classifier(weights, spec, device) if weights.exists() else None
    return referenced_backbones(cached, classifier, split, split_name, batch_size, max_features)


def load_reference(folder: Path, expected: ReferenceRecord) -> ReferenceFeatures:
    """The cached reference features in ``folder``, if they were computed exactly as ``expected`` says;
    else a clear error."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise GanopsError(f"{folder / RECORD} is missing: run the reference_stats stage (`dvc repro reference_stats`)") from None
    wanted = {**expected.as_dict(), "native_size": expected.native_size}  # an uncropped one too must match
    stale = {key: (record.get(key), value) for key, value in wanted.items()
             if key not in ("weights",) and record.get(key) != value}
    if stale:
        details = ", ".join(f"{key}: cached {old!r}, now {new!r}" for key, (old, new) in stale.items())
        raise GanopsError(f"the reference statistics in {folder} were computed differently ({details}); "
                          f"run `dvc repro reference_stats` (or `ganops reference-stats`)")
    features = np.load(folder / FEATURES, allow_pickle=False).astype(np.float64)
    with np.load(folder / STATISTICS, allow_pickle=False) as stats:
        mu, sigma, count = stats["mu"], stats["sigma"], int(stats["count"])
    if count != len(features) or mu.shape != (features.shape[1],):
        raise GanopsError(f"{folder}: features ({features.shape}) and statistics (count {count}) disagree; "
                          f"run `dvc repro -f reference_stats`")
    return ReferenceFeatures(features, mu, sigma, record)
