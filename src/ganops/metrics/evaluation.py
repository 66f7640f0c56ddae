"""One evaluation, opened once, scoring any number of generators: the seam that the train stage
(in-training scores, the final re-score) and the evaluate stage both go through.

    open_evaluation: reference record (typed) - backbones with their reference features - reference labels
    Evaluation.score: generator - draw plan (seeded draws) - features per backbone - each registry entry - Scores

The metrics registry is the caller's: the evaluate stage hands every metric
(``ganops.metrics.scores.METRICS``), the train stage only the in-training distance
(``ganops.metrics.snapshot``), so training does not depend on evaluate-only code (DVC's
dependencies are files). An entry (``Metric``) declares what it needs (``NEEDS``) and is skipped
where that is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ganops import GanopsError
from ganops.config import EvalParams
from ganops.io import file_sha256
from ganops.metrics.backbones import Backbone, DomainClassifierBackbone
from ganops.metrics.draws import EVALUATE, check_compatible, features_of_draws, generated_draws, sample_labels
from ganops.metrics.names import Measurement
from ganops.metrics.reference import (
    ReferencedBackbone,
    ReferenceFeatures,
    ReferenceRecord,
    SplitReader,
    open_backbones,
    resolve_reference,
)
from ganops.models import Generator, GeneratorSpec

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest

# What a registry entry may need; where it is missing the entry is skipped.
NEEDS = {
    "labels": "the generated images have labels (a conditional generator)",
    "reference_labels": "the reference features have labels",
    "training_reference": "the reference is the training split (eval.reference: train)",
    "domain_classifier": "the backbone is the domain classifier",
    "own_draws": "draws its own images from the generator (after every metric on the evaluation's draws)",
}


@dataclass(frozen=True)
class DrawPlan:
    """Which images one scoring draws: ``count`` in ``draws`` seeded draws for one use
    (ganops.metrics.draws: EVALUATE, WATCH, RESCORE), labelled with the reference's class
    frequencies when the generator is conditional."""

    count: int
    draws: int
    seed: int
    use: int
    batch_size: int
    labels: torch.Tensor | None

    def draw(self, generator: Generator) -> list[torch.Tensor]:
        return generated_draws(generator, self.labels, self.count, self.draws, self.batch_size, self.seed,
                               next(generator.parameters()).device, self.use)


@dataclass
class Scored:
    """What one backbone saw of one scoring: what a registry entry computes from."""

    backbone: Backbone
    reference: ReferenceFeatures
    measurement: Measurement
    primary: bool
    draws: list[torch.Tensor]  # the generated uint8 images, one tensor per seeded draw
    features: list[np.ndarray]  # their features, float64 (n_i, D) per draw
    labels: list[np.ndarray] | None  # each draw's labels (a conditional generator)
    plan: DrawPlan
    cfg: EvalParams
    evaluation: Evaluation | None = None  # the evaluation scoring (None: draws scored on their own)
    generator: Generator | None = None  # for the entries that draw their own images (``own_draws``)
    shared: dict[str, Any] = field(default_factory=dict)  # what entries compute once and share (neighbours)


@dataclass(frozen=True)
class NearestTraining:
    """The generated images nearest to their training neighbours, closest first: what the
    memorisation picture shows."""

    generated: np.ndarray  # indices into the concatenated draws
    training: np.ndarray   # indices into the reference features (their kept order)
    distances: np.ndarray
    threshold: float       # nearer than this: suspiciously close
    share: float           # of all generated images, those suspiciously close


@dataclass
class Found:
    """An entry's result: numbers named by their measurement, eval.json's description of how they were
    measured (methods, settings), and what the pictures need."""

    metrics: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)
    nearest: NearestTraining | None = None


@dataclass(frozen=True)
class Metric:
    """One entry of a metrics registry. ``needs``: keys of NEEDS; ``every_backbone``: on each
    backbone (a second opinion), not only the primary one."""

    compute: Callable[[Scored], Found]
    needs: frozenset[str] = frozenset()
    every_backbone: bool = False

    def applies(self, scored: Scored) -> bool:
        have = {"labels": scored.labels is not None, "reference_labels": scored.reference.labels is not None,
                "training_reference": scored.cfg.reference == "train",
                "domain_classifier": isinstance(scored.backbone, DomainClassifierBackbone),
                "own_draws": scored.generator is not None and scored.evaluation is not None}
        return (self.every_backbone or scored.primary) and all(have[need] for need in self.needs)


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float]  # named by measurement, in the order eval.json lists them
    record: dict[str, Any]  # how they were measured: methods and settings, in eval.json's order
    primary: str  # the primary metric's name
    draws: list[torch.Tensor]
    labels: torch.Tensor | None
    nearest: NearestTraining | None = None  # None: memorisation not measured


def score_draws(draws: list[torch.Tensor], labels: torch.Tensor | None, backbones: Sequence[ReferencedBackbone],
                cfg: EvalParams, metrics: Collection[Metric], plan: DrawPlan | None = None,
                evaluation: Evaluation | None = None, generator: Generator | None = None) -> Scores:
    """Every entry of ``metrics`` that applies, on generated uint8 ``draws`` (with their ``labels``
    when conditional): backbone by backbone, primary first, each name built from the backbone that
    computed the features; then the entries that draw their own images from ``generator``. Loads
    nothing: the caller opens the backbones and their references once for every call."""
    if not backbones:
        raise ValueError("score_draws needs at least one backbone")
    count = sum(len(draw) for draw in draws)
    plan = plan or DrawPlan(count, len(draws), cfg.seed, EVALUATE, cfg.batch_size, labels)
    bounds = np.cumsum([0] + [len(draw) for draw in draws])
    draw_labels = [labels[a:b].numpy() for a, b in zip(bounds[:-1], bounds[1:])] if labels is not None else None
    found = Found({})
    scored_primary = None
    for index, (backbone, reference) in enumerate(backbones):
        measurement = Measurement(backbone.name, backbone.feature_space, count, cfg.reference, backbone.native_size)
        scored = Scored(backbone, reference, measurement, index == 0, draws,
                        features_of_draws(backbone, draws, cfg.batch_size), draw_labels, plan, cfg, evaluation)
        scored_primary = scored_primary or scored
        for entry in metrics:
            if "own_draws" not in entry.needs and entry.applies(scored):
                _merge(found, entry.compute(scored))
    scored_primary.generator = generator
    for entry in metrics:
        if "own_draws" in entry.needs and entry.applies(scored_primary):
            _merge(found, entry.compute(scored_primary))
    return Scores(found.metrics, found.record, scored_primary.measurement.primary, draws, labels, found.nearest)


def _merge(into: Found, found: Found) -> None:
    into.metrics.update(found.metrics)
    into.record.update(found.record)
    into.nearest = found.nearest or into.nearest


@dataclass(frozen=True)
class ReferenceFiles:
    """Where an evaluation's references are: the reference_stats stage's folder, and the domain
    classifier's weights and spec (the train_evaluator stage's)."""

    folder: Path
    classifier_weights: Path
    classifier_spec: Path


@dataclass
class Evaluation:
    """An evaluation opened once (``open_evaluation``)."""

    cfg: EvalParams
    record: ReferenceRecord
    backbones: list[ReferencedBackbone]  # primary first
    split: SplitReader  # the reference split
    spec: GeneratorSpec
    reference_labels: np.ndarray | None  # the reference split's labels, for a conditional generator
    class_names: list[str] | None  # the data's, for a conditional generator
    evaluator_sha256: str | None = None  # the domain classifier's weights file, when it is a backbone

    def plan(self, count: int | None = None, use: int = EVALUATE) -> DrawPlan:
        """The draw plan of ``count`` images (eval.num_samples) for one use of generated images."""
        cfg, count = self.cfg, count or self.cfg.num_samples
        labels = (sample_labels(self.reference_labels, count, self.spec.num_classes, cfg.seed, use)
                  if self.reference_labels is not None else None)
        return DrawPlan(count, cfg.draws, cfg.seed, use, cfg.batch_size, labels)

    def measurement(self, count: int) -> Measurement:
        """How ``count`` images of this evaluation are measured on its primary backbone."""
        backbone = self.backbones[0].backbone
        return Measurement(backbone.name, backbone.feature_space, count, self.cfg.reference, backbone.native_size)

    def score(self, generator: Generator, metrics: Collection[Metric], plan: DrawPlan | None = None) -> Scores:
        """Every entry of ``metrics`` for ``generator``'s images drawn by ``plan`` (the evaluation's own by default)."""
        plan = plan or self.plan()
        return score_draws(plan.draw(generator), plan.labels, self.backbones, self.cfg, metrics, plan, self, generator)


def open_evaluation(cfg: EvalParams, manifest: Manifest, split: SplitReader, spec: GeneratorSpec,
                    files: ReferenceFiles, device: torch.device, primary_only: bool = False) -> Evaluation:
    """The evaluation of ``spec``'s generators against the reference ``split``: its record checked
    against the cached statistics, its backbones (``primary_only``: the first alone, as training
    scores), and the digest of the domain classifier's weights when it is one of them."""
    check_compatible(spec, manifest)
    classifier_before = file_sha256(files.classifier_weights) if files.classifier_weights.exists() else None
    record, inception = resolve_reference(cfg.backbone, cfg.inception_weights, cfg.fid_protocol, cfg.reference,
                                          device, manifest, cfg.reference_max_features, cfg.native_size)
    backbones = open_backbones(record, inception, files.folder, (files.classifier_weights, files.classifier_spec),
                               split, cfg.reference, cfg.batch_size, cfg.reference_max_features, device, primary_only)
    backbones = backbones[:1] if primary_only else backbones
    evaluator_sha256 = None
    if any(isinstance(b.backbone, DomainClassifierBackbone) for b in backbones):
        evaluator_sha256 = file_sha256(files.classifier_weights)
        if evaluator_sha256 != classifier_before:  # the digest must be of the weights that were loaded
            raise GanopsError(f"{files.classifier_weights} changed while it was loaded; run the evaluation again")
    conditional = spec.conditional
    return Evaluation(cfg, record, backbones, split, spec, split.labels if conditional else None,
                      manifest.class_names if conditional else None, evaluator_sha256)
