"""Stage export: the trained generator -> models/generator.onnx, models/fp16/ and reports/export.json.

The ONNX model is checked and tested for parity with torch. It carries its evaluation only when
reports/eval.json scored exactly this generator. models/fp16/ holds a model only when export.fp16.
reports/export.json holds parity and sizes only, which are deterministic, so DVC can compare runs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ganops import GanopsError
from ganops.config import TRAIN_RECIPE, Params
from ganops.io import atomic_dir, atomic_path, file_sha256, write_json_atomic
from ganops.metrics.report import EvaluationReport
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.serving.export import NonFiniteOutput, max_error, write_fp16, write_onnx
from ganops.tracking.runs import log_to_pipeline_run

log = logging.getLogger(__name__)
FP16_MODEL = "generator.onnx"  # inside models/fp16/


def export(params: Params, root: Path = Path(".")) -> dict:
    """Write models/generator.onnx (and models/fp16/ when export.fp16) and reports/export.json."""
    cfg = params.export
    paths = ProjectPaths(root)
    generator = load_generator(paths.generator_weights, paths.generator_spec, torch.device("cpu"))
    report: dict = {"opset": cfg.opset, "inputs": ["z", "labels"] if generator.spec.conditional else ["z"],
                    "output": "images", "output_range": [-1.0, 1.0], "layout": "NCHW"}
    # What was trained, not how the run went (so a new train.log_every does not re-export).
    training_params = {"model": params.model.model_dump(), "train": {key: getattr(params.train, key) for key in TRAIN_RECIPE}}
    # Both models are written and checked before either replaces the previous one: a model whose output
    # is measured non-finite (fp32 or fp16) stops the stage with nothing written.
    with atomic_path(paths.onnx) as tmp:
        write_onnx(generator, tmp, cfg, training_params, _evaluation_of_this_generator(paths),
                   file_sha256(paths.generator_weights))
        try:
            error = max_error(generator, tmp, cfg, providers=["CPUExecutionProvider"])
        except NonFiniteOutput as failure:
            raise NonFiniteOutput(f"{paths.onnx.name} is NOT written: {failure}; the previous one is kept") from None
        if not math.isfinite(error) or error > cfg.parity_tolerance:
            raise GanopsError(f"ONNX parity failed: max |onnxruntime - torch| = {error:.3g} > export.parity_tolerance "
                              f"{cfg.parity_tolerance:g}; the previous {paths.onnx.name} is kept")
        report["parity_max_abs_error"] = error
        report["file_size_bytes"] = tmp.stat().st_size
        with atomic_dir(paths.fp16) as staging:
            if cfg.fp16:
                report.update(write_fp16(generator, tmp, staging / FP16_MODEL, cfg))
    write_json_atomic(paths.export_report, report)
    log_to_pipeline_run(params.mlflow, root, paths.mlflow_run, "export", report)
    log.info("exported %s: parity %.2e, %d bytes", paths.onnx, report["parity_max_abs_error"], report["file_size_bytes"])
    return report


def _evaluation_of_this_generator(paths: ProjectPaths) -> dict | None:
    """reports/eval.json's summary, if it scored exactly the generator being exported (dvc.yaml runs
    evaluate before export); otherwise the model ships without metrics rather than with someone else's."""
    if not paths.eval_report.exists():
        log.warning("no %s: the exported model carries no evaluation metrics", paths.eval_report)
        return None
    report = EvaluationReport.load(paths.eval_report)
    if report.generator_sha256 != file_sha256(paths.generator_weights):
        log.warning("%s scored another generator: the exported model carries no evaluation metrics "
                    "(run `dvc repro evaluate` first)", paths.eval_report)
        return None
    return report.summary()
