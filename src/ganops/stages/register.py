"""Stage register: models/generator.onnx and its evaluation -> a new MLflow model version.

The version is logged to the pipeline's run. The alias ``champion`` moves to it only on a real
improvement; reports/register.json says which happened and why.
"""

from __future__ import annotations

from pathlib import Path

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest
from ganops.io import write_json_atomic
from ganops.metrics.report import EvaluationReport
from ganops.paths import ProjectPaths
from ganops.serving.export import model_interface
from ganops.tracking.registry import evaluation_signature, register_onnx
from ganops.tracking.store import pipeline_run_id


def register(params: Params, root: Path = Path(".")) -> dict:
    """Register the exported generator and decide on promotion; writes reports/register.json."""
    paths = ProjectPaths(root)
    for required, stage in ((paths.onnx, "export"), (paths.eval_report, "evaluate")):
        if not required.exists():
            raise GanopsError(f"{required} is missing; run the {stage} stage first (`dvc repro {stage}`)")
    if not params.mlflow.enabled:
        raise GanopsError("the register stage needs MLflow: set mlflow.enabled: true")
    report = EvaluationReport.load(paths.eval_report)
    eval_signature = evaluation_signature(report, load_manifest(paths.prepared), paths.evaluator_weights)
    decision = register_onnx(paths.onnx, model_interface(paths.onnx), report, eval_signature,
                             pipeline_run_id(paths.mlflow_run), params.mlflow, params.register, root)
    write_json_atomic(paths.register_report, decision.model_dump())
    return decision.model_dump()
