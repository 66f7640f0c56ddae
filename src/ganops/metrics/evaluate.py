"""The evaluate stage: sample the EMA generator, compare with the prepared real images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest, load_split
from ganops.device import resolve_device
from ganops.io import file_sha256, write_json_atomic
from ganops.metrics.backbones import DomainBackbone, extract_features
from ganops.metrics.evaluator import classifier_accuracy, evaluator_paths, load_evaluator
from ganops.metrics.frechet import feature_statistics
from ganops.metrics.names import EvalProtocol
from ganops.metrics.reference import ReferenceFeatures, load_reference, resolve_reference
from ganops.metrics.scores import METRICS, compute_metrics, spread_method
from ganops.models import Generator, GeneratorSpec, load_trained_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_to_pipeline_run
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


def draw_seed(seed: int, draw: int) -> int:
    """The noise seed of one draw: distinct for every (eval.seed, draw) pair."""
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def generated_draws(generator: Generator, labels: torch.Tensor | None, count: int, draws: int, batch_size: int,
                    seed: int, device: torch.device) -> list[torch.Tensor]:
    """``count`` uint8 images in ``draws`` seeded draws of (nearly) equal size; the noise is drawn on the
    CPU so every device sees the same z."""
    bounds = np.linspace(0, count, draws + 1).round().astype(int)
    out = []
    for draw, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        noise = torch.Generator().manual_seed(draw_seed(seed, draw))
        images = []
        for start in range(first, last, batch_size):
            n = min(batch_size, last - start)
            z = torch.randn(n, generator.spec.latent_dim, generator=noise).to(device)
            y = labels[start : start + n].to(device) if labels is not None else None
            with torch.no_grad():
                images.append(to_uint8_tensor(generator(z, y)).cpu())
        out.append(torch.cat(images))
    return out


def _features_of_draws(backbone, draws: list[torch.Tensor], batch_size: int) -> list[np.ndarray]:
    total = sum(len(d) for d in draws)
    flat = extract_features(backbone, (d[i : i + batch_size] for d in draws for i in range(0, len(d), batch_size)),
                            total, "generated")
    bounds = np.cumsum([0] + [len(d) for d in draws])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def evaluate(params: Params, root: Path = Path(".")) -> dict:
    """Write reports/eval.json (metrics named by protocol) and reports/eval_samples.png."""
    cfg = params.eval
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    device = resolve_device(cfg.device, "eval.device")
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
    expected, inception_backbone = resolve_reference(params, root)
    inception = inception_backbone is not None
    reference = load_reference(root, expected) if inception else None
    has_evaluator = evaluator_paths(root)[0].exists()
    if not inception and not has_evaluator:
        raise GanopsError("the domain evaluator (models/evaluator.safetensors) is missing: run `dvc repro train_evaluator`")
    labels = sample_labels(real_labels, cfg.num_samples, spec.num_classes, cfg.seed) if spec.conditional else None
    draws = generated_draws(generator, labels, cfg.num_samples, cfg.draws, cfg.batch_size, cfg.seed, device)
    generated = torch.cat(draws)

    report: dict = {"backbone": expected["backbone"], "num_samples": cfg.num_samples, "draws": cfg.draws,
                    "reference": cfg.reference, "num_reference": int(len(real_u8)),
                    "generator_sha256": file_sha256(paths.generator_weights)}
    metrics: dict[str, float] = {}
    if inception:
        protocol = EvalProtocol("inception", cfg.fid_protocol, cfg.num_samples, cfg.reference)
        report.update({"fid_protocol": cfg.fid_protocol, "weights_digest": expected["weights_digest"]})
        metrics.update(compute_metrics(reference, _features_of_draws(inception_backbone, draws, cfg.batch_size), cfg,
                                       protocol))
        primary = protocol.primary
    else:
        report["backbone_fallback"] = expected["fallback_reason"]
    if has_evaluator:
        domain = EvalProtocol("domain", "domain", cfg.num_samples, cfg.reference)
        backbone = DomainBackbone(load_evaluator(root, device))
        real_features = extract_features(backbone, (torch.from_numpy(real_u8[i : i + cfg.batch_size])
                                                    for i in range(0, len(real_u8), cfg.batch_size)),
                                         len(real_u8), f"real ({cfg.reference})")
        domain_reference = ReferenceFeatures(real_features, *feature_statistics(real_features), {})
        # Beside the standard FID the domain Fréchet distance is a second opinion; alone, it gets every metric.
        chosen = ("fd",) if inception else tuple(METRICS)
        metrics.update(compute_metrics(domain_reference, _features_of_draws(backbone, draws, cfg.batch_size), cfg,
                                       domain, chosen))
        if not inception:
            primary = domain.primary
        if spec.conditional:
            # the share of images the domain classifier assigns to the label they were generated for
            metrics[domain.name("class_consistency")] = round(
                classifier_accuracy(backbone.model, generated, labels, cfg.batch_size), 6)
    report["primary_metric"] = primary
    report["interval_method"] = spread_method(cfg, cfg.draws) if cfg.spread_rounds else "none (eval.spread_rounds: 0)"
    report.update(metrics)
    evaluator_report = paths.reports / "evaluator.json"
    if has_evaluator and evaluator_report.exists():
        report["evaluator_test_accuracy_domain"] = json.loads(evaluator_report.read_text()).get("test_accuracy")

    _write_samples(generated, labels, spec, paths.reports / "eval_samples.png")
    write_json_atomic(paths.reports / "eval.json", report)
    log_to_pipeline_run(params, root, "eval", report, [paths.reports / "eval_samples.png", paths.reports / "eval.json"])
    log.info("evaluation: %s = %s (95%% interval %s .. %s)", primary, report[primary],
             report.get(f"{primary}_ci95_low"), report.get(f"{primary}_ci95_high"))
    return report


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
