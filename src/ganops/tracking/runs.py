"""One MLflow run per pipeline execution: train opens it and writes its id to
reports/mlflow_run.json (a DVC output); evaluate, export and register log into the same run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganops.config import MlflowParams, Params
from ganops.io import file_sha256, write_json_atomic
from ganops.paths import TRAINING_CODE
from ganops.tracking.store import connect, experiment_id, pipeline_run_id, tracking_uri
from ganops.training.report import LOG_CURVES, TrainSummary
from ganops.visualize import as_pil

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest

log = logging.getLogger(__name__)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


# What the train stage reads when dvc.yaml is not there to say (a project driven from Python).
_TRAIN_DEPS = ["data/prepared", *(f"src/ganops/{part}" for part in TRAINING_CODE)]
_TRAIN_PARAMS = ["model", "train"]


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()


def _train_stage(root: Path) -> tuple[list[str], list[str]]:
    dvc_yaml = Path(root) / "dvc.yaml"
    if dvc_yaml.is_file():
        import yaml

        stage = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get("train")
        if stage:
            deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
            params = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
            return deps, params
    return _TRAIN_DEPS, _TRAIN_PARAMS


def _resolve_dep(root: Path, dep: str) -> Path | None:
    path = Path(root) / dep
    if path.exists():
        return path
    if dep.startswith("src/ganops/"):  # the installed package's own code, outside a project checkout
        import ganops

        path = Path(ganops.__file__).parent / dep.removeprefix("src/ganops/")
        return path if path.exists() else None
    return None


def lineage_tags(root: Path, manifest: Manifest, params: Params) -> dict[str, str]:
    """Where this run came from, as it was when it ran: the hashes of the train stage's own
    dependencies and params (read from dvc.yaml), git, and the data checksums. (Not dvc.lock: DVC
    writes this run's lock only after the stage ends, so during train it still describes the last run.)"""
    tags = {
        "data.source": manifest.source,
        "data.source_checksum": manifest.source_checksum,
        "data.train_checksum": manifest.checksum("train"),
    }
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git(root, "status", "--porcelain", "--untracked-files=no"))).lower()
    deps, param_keys = _train_stage(root)
    for dep in deps:
        path = _resolve_dep(root, dep)
        tags[f"lineage.dep.{dep}"] = tree_sha256(path) if path is not None else "missing"
    dumped = params.model_dump(mode="json")
    chosen = {}
    for key in param_keys:
        value = dumped
        for part in key.split("."):
            value = value[part]
        chosen[key] = value
    tags["lineage.params"] = json.dumps(chosen, sort_keys=True)[:5000]
    tags["lineage.params.sha256"] = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()
    tags["lineage.sha256"] = hashlib.sha256(json.dumps(
        {k: v for k, v in tags.items() if k.startswith("lineage.")}, sort_keys=True).encode()).hexdigest()
    return tags


def _log_metrics(client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def preflight(cfg: MlflowParams, root: Path) -> None:
    """Fail before hours of training, not after, when the tracking store is unreachable."""
    if cfg.enabled:
        connect(cfg, root)


def run_name(started_at: float) -> str:
    """A `dvc exp run` experiment's own name (DVC sets DVC_EXP_NAME), so the DVC and MLflow UIs name
    the same run the same way; else train-<start time>."""
    return os.environ.get("DVC_EXP_NAME") or f"train-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started_at))}"


def log_training(params: Params, root: Path, run_file: Path, lineage: dict[str, str], summary: TrainSummary,
                 log_rows: list[dict], started_at: float, artifacts: list[Path], watch_rows: list[dict] = (),
                 previews: list[tuple[int, np.ndarray]] = (), run_id: str | None = None) -> str | None:
    """Open the pipeline's run and record its id in ``run_file``: every param (the whole tree: a run
    holds all of params.yaml), loss curves and in-training evaluations with their steps, the
    fixed-noise samples of each evaluation (the run page's image slider, key ``samples``), the
    ``lineage`` tags (taken when training started: what it trained on), training artifacts.
    ``run_id``: a run opened already (a sweep's trial), logged into instead of a new one; params it
    holds already are not logged again."""
    if not params.mlflow.enabled:
        write_json_atomic(run_file, {"enabled": False, "run_id": None})
        return None
    from mlflow.entities import Metric, Param, RunTag

    client = connect(params.mlflow, root)
    if run_id is None:
        run = client.create_run(experiment_id(client, params.mlflow, root), start_time=int(started_at * 1000),
                                tags=lineage, run_name=run_name(started_at))
        run_id, logged, owned = run.info.run_id, {}, True
    else:
        logged, owned = client.get_run(run_id).data.params, False  # its owner (the sweep) ends it
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in lineage.items()])
    flat = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in flatten(params.model_dump(mode="json")).items() if k not in logged]
    for start in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[start : start + 100])
    now = int(time.time() * 1000)
    metrics = [Metric(f"train/{key}", float(row[key]), now, int(row["step"]))
               for row in log_rows for key in LOG_CURVES if key in row]
    metrics += [Metric(f"train/{key}_final" if key in LOG_CURVES else f"train/{key}", float(value), now, params.train.steps)
                for key, value in summary.as_json().items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    metrics += [Metric(f"train/{row['metric']}{suffix}", float(row[key]), now, int(row["step"]))
                for row in watch_rows for key, suffix in (("value", ""), ("std", "_std"))]
    _log_metrics(client, run_id, metrics)
    for step, picture in previews:
        client.log_image(run_id, as_pil(picture), key="samples", step=step)
    for key in ("chosen_because", "stopped_early", "watch_metric"):
        if getattr(summary, key):
            client.set_tag(run_id, f"train.{key}", str(getattr(summary, key))[:5000])
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact), artifact_path="train")
    if owned:
        client.set_terminated(run_id, status="FINISHED")
    write_json_atomic(run_file, {"enabled": True, "run_id": run_id, "experiment": params.mlflow.experiment,
                                              "tracking_uri": tracking_uri(params.mlflow, root)})
    log.info("MLflow run %s (experiment %s)", run_id, params.mlflow.experiment)
    return run_id


def log_to_pipeline_run(cfg: MlflowParams, root: Path, run_file: Path, prefix: str, metrics: dict,
                        artifacts: list[Path] = ()) -> str | None:
    """Add a later stage's numbers and files to the run that train opened (its id in ``run_file``)."""
    if not cfg.enabled:
        return None
    run_id = pipeline_run_id(run_file)
    from mlflow.entities import Metric

    client = connect(cfg, root)
    now = int(time.time() * 1000)
    numbers = [Metric(f"{prefix}/{k}", float(v), now, 0) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    _log_metrics(client, run_id, numbers)
    for key, value in metrics.items():  # what the numbers mean: primary metric, protocol, interval method
        if isinstance(value, str):
            client.set_tag(run_id, f"{prefix}.{key}", value[:5000])
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact), artifact_path=prefix)
    return run_id
