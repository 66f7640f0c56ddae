"""Stage evaluate: the trained generator vs the reference split -> reports/eval.json (metrics named
by protocol, the primary one the standard FID) and reports/eval_samples.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.io import file_sha256, write_bytes_atomic, write_json_atomic
from ganops.metrics.backbones import DomainClassifierBackbone
from ganops.metrics.draws import check_compatible, features_of_draws, generated_draws, sample_labels
from ganops.metrics.domain_classifier import classifier_accuracy, load_domain_classifier
from ganops.metrics.names import Measurement
from ganops.metrics.report import EvaluationReport
from ganops.metrics.reference import load_reference, resolve_reference, split_features
from ganops.metrics.scores import METRICS, compute_metrics, spread_method
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_to_pipeline_run
from ganops.visualize import sample_grid_png

log = logging.getLogger(__name__)
MIN_REFERENCE = 10


def evaluate(params: Params, root: Path = Path(".")) -> dict:
    """Write reports/eval.json (metrics named by protocol) and reports/eval_samples.png."""
    cfg = params.eval
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    device = resolve_device(cfg.device, "eval.device")
    generator = load_generator(paths.generator_weights, paths.generator_spec, device)
    spec = generator.spec
    check_compatible(spec, manifest)
    real = open_split(paths.prepared, cfg.reference)  # read a batch at a time
    real_labels = real.labels
    if len(real) < MIN_REFERENCE:
        raise GanopsError(f"the {cfg.reference} split holds {len(real)} images; evaluation needs at least "
                          f"{MIN_REFERENCE} (set eval.reference or data.test_fraction)")
    if cfg.num_samples <= cfg.prc_neighborhood or len(real) <= cfg.prc_neighborhood:
        raise GanopsError(f"eval.num_samples={cfg.num_samples} and the {len(real)} reference images must both "
                          f"exceed eval.prc_neighborhood={cfg.prc_neighborhood}")
    expected, inception_backbone = resolve_reference(cfg.backbone, cfg.inception_weights, cfg.fid_protocol,
                                                     cfg.reference, device, manifest, cfg.reference_max_features)
    inception = inception_backbone is not None
    reference = load_reference(paths.reference, expected) if inception else None
    has_evaluator = paths.evaluator_weights.exists()
    if not inception and not has_evaluator:
        raise GanopsError("the domain classifier (models/evaluator.safetensors) is missing: run `dvc repro train_evaluator`")
    labels = sample_labels(real_labels, cfg.num_samples, spec.num_classes, cfg.seed) if spec.conditional else None
    draws = generated_draws(generator, labels, cfg.num_samples, cfg.draws, cfg.batch_size, cfg.seed, device)
    generated = torch.cat(draws)

    report: dict = {"backbone": expected["backbone"], "num_samples": cfg.num_samples, "draws": cfg.draws,
                    "reference": cfg.reference, "num_reference": int(len(real)),
                    "generator_sha256": file_sha256(paths.generator_weights)}
    metrics: dict[str, float] = {}
    if inception:
        measurement = Measurement("inception", cfg.fid_protocol, cfg.num_samples, cfg.reference)
        report.update({"fid_protocol": cfg.fid_protocol, "weights_digest": expected["weights_digest"]})
        metrics.update(compute_metrics(reference, features_of_draws(inception_backbone, draws, cfg.batch_size), cfg,
                                       measurement))
        primary = measurement.primary
    else:
        report["backbone_fallback"] = expected["fallback_reason"]
    if has_evaluator:
        domain = Measurement("domain", "domain", cfg.num_samples, cfg.reference)
        backbone = DomainClassifierBackbone(load_domain_classifier(paths.evaluator_weights, paths.evaluator_spec, device))
        domain_reference = split_features(backbone, real, cfg.batch_size, cfg.reference_max_features,
                                          f"real ({cfg.reference})")
        # Beside the standard FID the domain Fréchet distance is a second opinion; alone, it gets every metric.
        chosen = ("fd",) if inception else tuple(METRICS)
        metrics.update(compute_metrics(domain_reference, features_of_draws(backbone, draws, cfg.batch_size), cfg,
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
    if has_evaluator and paths.evaluator_report.exists():
        report["evaluator_test_accuracy_domain"] = json.loads(paths.evaluator_report.read_text()).get("test_accuracy")

    write_bytes_atomic(paths.eval_samples, sample_grid_png(generated.numpy(), labels.numpy() if labels is not None
                                                           else None, spec.num_classes))
    EvaluationReport.model_validate(report)  # the record later stages read back
    write_json_atomic(paths.eval_report, report)
    log_to_pipeline_run(params.mlflow, root, paths.mlflow_run, "eval", report, [paths.eval_samples, paths.eval_report])
    log.info("evaluation: %s = %s (95%% interval %s .. %s)", primary, report[primary],
             report.get(f"{primary}_ci95_low"), report.get(f"{primary}_ci95_high"))
    return report
