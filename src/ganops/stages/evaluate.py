"""Stage evaluate: the trained generator vs the reference split -> reports/eval.json (metrics named
by their measurement, the primary one the standard FID) and reports/eval_samples.png. What is scored
how is :func:`ganops.metrics.scores.score_draws`'s; this module loads, calls it, writes and logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ganops import GanopsError
from ganops.config import EvalParams, Params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.io import file_sha256, first_non_finite, write_bytes_atomic, write_json_atomic
from ganops.metrics.draws import check_compatible, generated_draws, sample_labels
from ganops.metrics.reference import ReferencedBackbone, kept_mask, open_backbones, resolve_reference
from ganops.metrics.report import EvaluationReport
from ganops.metrics.scores import (
    FD_INF_METHOD,
    MEMORISATION_METHOD,
    Scores,
    fd_inf_counts,
    score_draws,
    spread_method,
    truncation_curve,
    truncation_method,
)
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_to_pipeline_run
from ganops.visualize import memorisation_png, notice_png, sample_grid_png

log = logging.getLogger(__name__)
MIN_REFERENCE = 10


def evaluate(params: Params, root: Path = Path(".")) -> dict:
    """Write reports/eval.json (metrics named by their measurement) and reports/eval_samples.png."""
    cfg = params.eval
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    device = resolve_device(cfg.device, "eval.device")
    generator = load_generator(paths.generator_weights, paths.generator_spec, device)
    spec = generator.spec
    check_compatible(spec, manifest)
    real = open_split(paths.prepared, cfg.reference)  # read a batch at a time
    _check_sizes(cfg, len(real))
    expected, inception = resolve_reference(cfg.backbone, cfg.inception_weights, cfg.fid_protocol, cfg.reference,
                                            device, manifest, cfg.reference_max_features)
    backbones = open_backbones(expected, inception, paths.reference, (paths.evaluator_weights, paths.evaluator_spec),
                               real, cfg.reference, cfg.batch_size, cfg.reference_max_features, device)

    reference_labels = real.labels if spec.conditional else None
    labels = sample_labels(reference_labels, cfg.num_samples, spec.num_classes, cfg.seed) if spec.conditional else None
    draws = generated_draws(generator, labels, cfg.num_samples, cfg.draws, cfg.batch_size, cfg.seed, device)
    scores = score_draws(draws, labels, backbones, cfg)
    curve = truncation_curve(generator, reference_labels, spec.num_classes, backbones[0], cfg)

    report = _report(cfg, paths, expected, len(real), manifest.class_names if spec.conditional else None,
                     backbones[0], scores, curve)
    where = first_non_finite(report)
    if where is not None:  # checked before any output is replaced: the pictures and eval.json change together
        raise GanopsError(f"the evaluation's {where} is not a finite number; nothing written")
    generated = torch.cat(draws)
    write_bytes_atomic(paths.eval_samples, sample_grid_png(generated.numpy(), labels.numpy() if labels is not None
                                                           else None, spec.num_classes))
    if scores.nearest is not None:
        kept = np.flatnonzero(kept_mask(len(real), cfg.reference_max_features))
        picture = memorisation_png(generated[scores.nearest.generated].numpy(), real.gather(kept[scores.nearest.training]),
                                   scores.nearest.distances, scores.nearest.threshold)
    else:
        picture = notice_png(f"memorisation not measured: eval.reference is {cfg.reference}, not the training split")
    write_bytes_atomic(paths.eval_memorisation, picture)
    EvaluationReport.model_validate(report)  # the record later stages read back
    write_json_atomic(paths.eval_report, report)
    log_to_pipeline_run(params.mlflow, root, paths.mlflow_run, "eval", report,
                        [paths.eval_samples, paths.eval_memorisation, paths.eval_report])
    log.info("evaluation: %s = %s (95%% interval %s .. %s)", scores.primary, report[scores.primary],
             report.get(f"{scores.primary}_ci95_low"), report.get(f"{scores.primary}_ci95_high"))
    return report


def _check_sizes(cfg: EvalParams, num_reference: int) -> None:
    if num_reference < MIN_REFERENCE:
        raise GanopsError(f"the {cfg.reference} split holds {num_reference} images; evaluation needs at least "
                          f"{MIN_REFERENCE} (set eval.reference or data.test_fraction)")
    neighbours = max(cfg.prc_neighborhood, cfg.dc_neighborhood)
    smallest = min(cfg.num_samples, cfg.truncation_samples) if cfg.truncation else cfg.num_samples
    if smallest <= neighbours or min(num_reference, cfg.reference_max_features) <= neighbours:
        raise GanopsError(f"eval.num_samples={cfg.num_samples}, eval.truncation_samples={cfg.truncation_samples} and "
                          f"the reference features kept (the fewer of its {num_reference} images and "
                          f"eval.reference_max_features) must all exceed eval.prc_neighborhood="
                          f"{cfg.prc_neighborhood} and eval.dc_neighborhood={cfg.dc_neighborhood}")


def _report(cfg: EvalParams, paths: ProjectPaths, expected: dict, num_reference: int, class_names: list[str] | None,
            primary: ReferencedBackbone, scores: Scores, curve: dict[str, float]) -> dict:
    """eval.json's fields in their order: what was measured, how, the metrics, the classifier's accuracy."""
    report: dict = {"backbone": expected["backbone"], "num_samples": cfg.num_samples, "draws": cfg.draws,
                    "reference": cfg.reference, "num_reference": int(num_reference),
                    "generator_sha256": file_sha256(paths.generator_weights)}
    if expected["backbone"] == "inception":
        report.update({"fid_protocol": cfg.fid_protocol, "weights_digest": expected["weights_digest"]})
    else:
        report["backbone_fallback"] = expected["fallback_reason"]
    report["primary_metric"] = scores.primary
    report["interval_method"] = spread_method(cfg, cfg.draws) if cfg.spread_rounds else "none (eval.spread_rounds: 0)"
    report["fd_inf_method"] = FD_INF_METHOD.format(counts=", ".join(map(str, fd_inf_counts(cfg.num_samples, cfg.fid_inf_points))))
    if class_names is not None:
        report["class_names"] = class_names
    if scores.nearest is not None:
        report["memorisation_method"] = MEMORISATION_METHOD.format(
            space=primary.backbone.feature_space, count=len(primary.reference.features),
            quantile=cfg.memorisation_quantile, limit=cfg.memorisation_max_share)
        report["memorisation_suspected"] = scores.nearest.share > cfg.memorisation_max_share
    if curve:
        report.update({"truncation_method": truncation_method(cfg), "truncation": cfg.truncation,
                       "truncation_samples": cfg.truncation_samples})
    report.update(scores.metrics)
    report.update(curve)
    if paths.evaluator_weights.exists() and paths.evaluator_report.exists():
        report["evaluator_test_accuracy_domain"] = json.loads(paths.evaluator_report.read_text()).get("test_accuracy")
    return report
