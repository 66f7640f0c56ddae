"""Stage register: models/generator.onnx and its evaluation -> a new MLflow model version.

The version is logged to the pipeline's run. The alias ``champion`` moves to it only on a real
improvement; reports/register.json says which happened and why.
"""

from __future__ import annotations

import math
from pathlib import Path

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest
from ganops.io import file_sha256, write_json_atomic
from ganops.metrics.backbones import resolve_backbone
from ganops.metrics.inception import fid_weights_digest
from ganops.metrics.report import EvaluationReport
from ganops.paths import ProjectPaths
from ganops.serving.export import GENERATOR_DIGEST_KEY, model_interface
from ganops.serving.runtime import onnx_metadata
from ganops.tracking.card import (
    CardInputs,
    attach_model_card,
    read_watch_rows,
    run_lineage,
    run_recipe,
    write_model_card,
)
from ganops.tracking.registry import evaluation_signature, register_onnx
from ganops.tracking.store import connect, pipeline_run_id
from ganops.training.report import TrainSummary


def register(params: Params, root: Path = Path(".")) -> dict:
    """Register the exported generator and decide on promotion; writes reports/register.json."""
    paths = ProjectPaths(root)
    for required, stage in ((paths.onnx, "export"), (paths.eval_report, "evaluate")):
        if not required.exists():
            raise GanopsError(f"{required} is missing; run the {stage} stage first (`dvc repro {stage}`)")
    if not params.mlflow.enabled:
        raise GanopsError("the register stage needs MLflow: set mlflow.enabled: true")
    report = EvaluationReport.load(paths.eval_report)
    check_same_generator(paths.onnx, report, paths.eval_report)
    check_same_networks(report, paths, params.eval.inception_weights)
    for name in (report.primary_metric, f"{report.primary_metric}_std", f"{report.primary_metric}_ci95_low",
                 f"{report.primary_metric}_ci95_high"):
        value = report.metric(name)
        if value is None and name != report.primary_metric:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GanopsError(f"{paths.eval_report}: {name} is {value!r}, not a finite number; a generator is "
                              "never registered on it (rerun `dvc repro evaluate`)")
    manifest = load_manifest(paths.prepared)
    eval_signature = evaluation_signature(report, manifest)
    decision = register_onnx(paths.onnx, model_interface(paths.onnx), report, eval_signature,
                             pipeline_run_id(paths.mlflow_run), params.mlflow, params.register, root)
    client = connect(params.mlflow, root)
    run_tags = client.get_run(decision.run_id).data.tags
    inputs = CardInputs(
        model_name=decision.model_name, version=decision.version, promoted=decision.promoted, reason=decision.reason,
        run_id=decision.run_id, onnx_sha256=file_sha256(paths.onnx), report=report,
        data={"source": manifest.source, "resolution": manifest.resolution, "channels": manifest.channels,
              "conditional": report.class_names is not None, "class_names": manifest.class_names,
              "counts": {"train": manifest.num_train, "test": manifest.num_test},
              "checksums": {split: manifest.checksum(split) for split in ("train", "test")}},
        recipe=run_recipe(run_tags), lineage=run_lineage(run_tags),
        train_report=TrainSummary.load(paths.train_report) if paths.train_report.exists() else None,
        watch_rows=read_watch_rows(paths.train_watch), samples_png=paths.eval_samples,
        memorisation_png=paths.eval_memorisation if report.memorisation_suspected is not None else None)
    write_model_card(paths.model_card, inputs)
    attach_model_card(client, decision.model_name, decision.version, decision.run_id, paths.model_card, inputs)
    write_json_atomic(paths.register_report, decision.model_dump())
    return decision.model_dump()


def check_same_generator(onnx_path: Path, report: EvaluationReport, report_path: Path) -> None:
    """The ONNX model must be the generator that the evaluation scored: the weights digest export
    recorded in the model against eval.json's, or the stage refuses, naming both."""
    exported_from = onnx_metadata(onnx_path).get(GENERATOR_DIGEST_KEY)
    if exported_from is None:
        raise GanopsError(f"{onnx_path} does not say which generator it was exported from (no {GENERATOR_DIGEST_KEY}: "
                          "an older export); re-export it (`dvc repro export`)")
    if exported_from != report.generator_sha256:
        raise GanopsError(f"{report_path} scored generator {report.generator_sha256[:16]}..., but {onnx_path} was "
                          f"exported from generator {exported_from[:16]}...: refusing to register a model on another "
                          "generator's numbers (run `dvc repro` so evaluate and export see the same generator)")


def check_same_networks(report: EvaluationReport, paths: ProjectPaths, inception_weights: str | None) -> None:
    """Every network that scored the evaluation must be the one in place now, or its numbers are not
    those of the version's signature: the domain classifier's weights file and the FID Inception
    weights against the digests eval.json recorded; the stage refuses, naming both."""
    if report.evaluator_sha256 is not None:
        now = file_sha256(paths.evaluator_weights) if paths.evaluator_weights.exists() else "missing"
        if now != report.evaluator_sha256:
            raise GanopsError(f"{paths.eval_report} was scored with the domain classifier {report.evaluator_sha256[:16]}..., "
                              f"but {paths.evaluator_weights} is now {now[:16]}...: refusing to register on another "
                              "classifier's numbers (run `dvc repro evaluate`)")
    if report.backbone == "inception":
        _, weights, _ = resolve_backbone("inception", inception_weights)  # refuses when they are gone
        now = fid_weights_digest(weights)
        if now != report.weights_digest:
            raise GanopsError(f"{paths.eval_report} was scored with the FID Inception weights {report.weights_digest[:16]}..., "
                              f"but {weights} now holds {now[:16]}...: refusing to register on other weights' numbers "
                              "(run `dvc repro reference_stats evaluate`)")
