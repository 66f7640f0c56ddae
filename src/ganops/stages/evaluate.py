"""Stage evaluate: the trained generator vs the reference split -> reports/eval.json (metrics named
by their measurement, the primary one the standard FID), its siblings (how it was measured, per class,
per truncation psi: ganops.metrics.report) and its pictures. What is scored how is the
evaluation's (ganops.metrics.evaluation, with every metric of ganops.metrics.scores.METRICS)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ganops.config import Params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.io import file_sha256, write_bytes_atomic
from ganops.metrics.evaluation import ReferenceFiles, open_evaluation
from ganops.metrics.report import EvaluationReport
from ganops.metrics.scores import METRICS, check_sizes, evaluation_report, memorisation_picture, samples_picture
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_to_pipeline_run

log = logging.getLogger(__name__)


def evaluate(params: Params, root: Path = Path(".")) -> dict:
    """Write reports/eval.json and its siblings, reports/eval_samples.png and reports/eval_memorisation.png."""
    cfg, paths = params.eval, ProjectPaths(root)
    device = resolve_device(cfg.device, "eval.device")
    generator = load_generator(paths.generator_weights, paths.generator_spec, device)
    files = ReferenceFiles(paths.reference, paths.evaluator_weights, paths.evaluator_spec)
    split = open_split(paths.prepared, cfg.reference)
    check_sizes(cfg, len(split))
    evaluation = open_evaluation(cfg, load_manifest(paths.prepared), split, generator.spec, files, device)
    scores = evaluation.score(generator, METRICS.values())
    report = evaluation_report(evaluation, scores, file_sha256(paths.generator_weights), _evaluator_accuracy(paths))
    write_bytes_atomic(paths.eval_samples, samples_picture(evaluation, scores))
    write_bytes_atomic(paths.eval_memorisation, memorisation_picture(evaluation, scores))
    written = EvaluationReport.model_validate(report).write(paths.eval_report)
    log_to_pipeline_run(params.mlflow, root, paths.mlflow_run, "eval", report,
                        [paths.eval_samples, paths.eval_memorisation, *written])
    log.info("evaluation: %s = %s (95%% interval %s .. %s)", scores.primary, report[scores.primary],
             report.get(f"{scores.primary}_ci95_low"), report.get(f"{scores.primary}_ci95_high"))
    return report


def _evaluator_accuracy(paths: ProjectPaths) -> dict:
    """The domain classifier's test accuracy, when it was trained."""
    if paths.evaluator_weights.exists() and paths.evaluator_report.exists():
        return {"evaluator_test_accuracy_domain": json.loads(paths.evaluator_report.read_text()).get("test_accuracy")}
    return {}
