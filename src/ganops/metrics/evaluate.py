"""The evaluate stage: sample the EMA generator, compare with the prepared real images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest, load_split
from ganops.io import write_json_atomic
from ganops.metrics.backbones import build_backbone, extract_features, resolve_backbone
from ganops.metrics.evaluator import classifier_accuracy, load_evaluator
from ganops.metrics.scores import compute_metrics
from ganops.models import Generator, GeneratorSpec, load_trained_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_to_pipeline_run
from ganops.training.loop import resolve_device
from ganops.visualize import save_grid, to_uint8_tensor

log = logging.getLogger(__name__)
MIN_REFERENCE = 10


def _check_compatible(spec: GeneratorSpec, manifest: dict) -> None:
    made = (spec.resolution, spec.channels)
    held = (manifest["resolution"], manifest["channels"])
    if made != held:
        raise GanopsError(
            f"the generator makes {made[0]}x{made[0]} images with {made[1]} channel(s) but data/prepared holds "
            f"{held[0]}x{held[0]} with {held[1]}; re-run `dvc repro train` after changing the data"
        )
    if spec.conditional and spec.num_classes != manifest["num_classes"]:
        raise GanopsError(
            f"the generator knows {spec.num_classes} classes but data/prepared has {manifest['num_classes']}"
        )


def sample_labels(reference_labels: np.ndarray, count: int, num_classes: int, seed: int) -> torch.Tensor:
    """Labels for generated images, drawn with the reference set's class frequencies."""
    frequencies = np.bincount(reference_labels, minlength=num_classes).astype(np.float64)
    return torch.from_numpy(np.random.default_rng(seed).choice(num_classes, size=count, p=frequencies / frequencies.sum()))


def generated_batches(generator: Generator, labels: torch.Tensor | None, count: int, batch_size: int, seed: int,
                      device: torch.device) -> Iterator[torch.Tensor]:
    """uint8 images from seeded noise; the noise is drawn on the CPU so every device sees the same z."""
    noise = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        z = torch.randn(n, generator.spec.latent_dim, generator=noise).to(device)
        y = labels[start : start + n].to(device) if labels is not None else None
        with torch.no_grad():
            images = generator(z, y)
        yield to_uint8_tensor(images)


def evaluate(params: Params, root: Path = Path(".")) -> dict:
    """Write reports/eval.json (metrics named by backbone) and reports/eval_samples.png."""
    cfg = params.eval
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    device = resolve_device(cfg.device)
    generator = load_trained_generator(root, device)
    spec = generator.spec
    _check_compatible(spec, manifest)
    real_u8, real_labels = load_split(paths.prepared, cfg.reference)
    if len(real_u8) < MIN_REFERENCE:
        raise GanopsError(f"the {cfg.reference} split holds {len(real_u8)} images; evaluation needs at least "
                          f"{MIN_REFERENCE} (set eval.reference or data.test_fraction)")
    if cfg.num_samples <= cfg.prc_neighborhood or len(real_u8) <= cfg.prc_neighborhood:
        raise GanopsError(f"eval.num_samples={cfg.num_samples} and the {len(real_u8)} reference images must both "
                          f"exceed eval.prc_neighborhood={cfg.prc_neighborhood}")
    backbone_name, weights = resolve_backbone(cfg.backbone, cfg.inception_weights)
    backbone = build_backbone(backbone_name, weights, root, device)
    labels = sample_labels(real_labels, cfg.num_samples, spec.num_classes, cfg.seed) if spec.conditional else None

    real_tensor = torch.from_numpy(real_u8)
    real_features = extract_features(
        backbone, (real_tensor[i : i + cfg.batch_size].to(device) for i in range(0, len(real_tensor), cfg.batch_size)),
        len(real_tensor), f"real ({cfg.reference})")
    generated: list[torch.Tensor] = []

    def keep(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for batch in batches:
            generated.append(batch.cpu())
            yield batch

    fake_features = extract_features(
        backbone, keep(generated_batches(generator, labels, cfg.num_samples, cfg.batch_size, cfg.seed, device)),
        cfg.num_samples, "generated")
    fake_u8 = torch.cat(generated)

    report: dict = {"backbone": backbone_name, "num_samples": cfg.num_samples, "reference": cfg.reference,
                    "num_reference": int(len(real_u8))}
    report.update(compute_metrics(real_features, fake_features, cfg, backbone_name))
    if spec.conditional:
        report["class_consistency_domain"] = round(_class_consistency(root, fake_u8, labels, cfg.batch_size, device), 6)
    evaluator_report = paths.reports / "evaluator.json"
    if evaluator_report.exists():
        report["evaluator_test_accuracy_domain"] = json.loads(evaluator_report.read_text()).get("test_accuracy")

    _write_samples(fake_u8, labels, spec, paths.reports / "eval_samples.png")
    write_json_atomic(paths.reports / "eval.json", report)
    log_to_pipeline_run(params, root, "eval", report, [paths.reports / "eval_samples.png", paths.reports / "eval.json"])
    log.info("evaluation (%s backbone): %s", backbone_name,
             ", ".join(f"{k}={v}" for k, v in report.items() if k.startswith(("fd_", "fid_")) and "_ci" not in k))
    return report


def _class_consistency(root: Path, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Share of generated images the domain classifier assigns to the label they were generated for."""
    return classifier_accuracy(load_evaluator(root, device), images, labels, batch_size)


def _write_samples(images: torch.Tensor, labels: torch.Tensor | None, spec: GeneratorSpec, path: Path) -> None:
    """Up to 8 evaluation samples per class (one row each) when conditional, else the first 64."""
    if labels is None:
        save_grid(images[:64].numpy(), 8, path)
        return
    rows = []
    for label in range(spec.num_classes):
        picked = images[labels == label][:8]
        if len(picked):
            rows.append(torch.cat([picked, torch.zeros(8 - len(picked), *picked.shape[1:], dtype=torch.uint8)]))
    save_grid(torch.cat(rows).numpy(), len(rows), path)
