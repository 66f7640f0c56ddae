"""One MLflow run per pipeline execution: train opens it and writes its id to
reports/mlflow_run.json (a DVC output); evaluate, export and register log into the same run."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from ganops.config import Params
from ganops.io import write_json_atomic
from ganops.tracking.store import RUN_FILE, connect, experiment_id, pipeline_run_id, tracking_uri

log = logging.getLogger(__name__)
LOSS_CURVES = ("loss_d", "loss_g", "d_real", "d_fake", "penalty", "images_per_s")


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


def lineage_tags(root: Path, manifest: dict) -> dict[str, str]:
    """Where a run came from: code (git), data (manifest checksums) and pipeline state (dvc.lock)."""
    tags = {
        "data.source": manifest["source"],
        "data.source_checksum": manifest["source_checksum"],
        "data.train_checksum": manifest["files"]["train"]["sha256"],
    }
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git(root, "status", "--porcelain", "--untracked-files=no"))).lower()
    lock = Path(root) / "dvc.lock"
    if lock.exists():
        tags["dvc.lock.sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


def _log_metrics(client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def disabled(root: Path) -> None:
    write_json_atomic(Path(root) / RUN_FILE, {"enabled": False, "run_id": None})


def preflight(params: Params, root: Path) -> None:
    """Fail before hours of training, not after, when the tracking store is unreachable."""
    if params.mlflow.enabled:
        connect(params.mlflow, root)


def log_training(params: Params, root: Path, manifest: dict, summary: dict, log_rows: list[dict],
                 started_at: float, artifacts: list[Path]) -> str | None:
    """Open the pipeline's run: params, loss curves with their steps, lineage, training artifacts."""
    if not params.mlflow.enabled:
        disabled(root)
        return None
    from mlflow.entities import Metric, Param

    client = connect(params.mlflow, root)
    run = client.create_run(experiment_id(client, params.mlflow, root), start_time=int(started_at * 1000),
                            tags=lineage_tags(root, manifest), run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = run.info.run_id
    flat = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(params.model_dump(mode="json")).items()]
    for start in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[start : start + 100])
    now = int(time.time() * 1000)
    metrics = [Metric(f"train/{key}", float(row[key]), now, int(row["step"])) for row in log_rows for key in LOSS_CURVES if key in row]
    metrics += [Metric(f"train/{key}_final" if key in LOSS_CURVES else f"train/{key}", float(value), now, params.train.steps)
                for key, value in summary.items() if isinstance(value, (int, float))]
    _log_metrics(client, run_id, metrics)
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact), artifact_path="train")
    client.set_terminated(run_id, status="FINISHED")
    write_json_atomic(Path(root) / RUN_FILE, {"enabled": True, "run_id": run_id, "experiment": params.mlflow.experiment,
                                              "tracking_uri": tracking_uri(params.mlflow, root)})
    log.info("MLflow run %s (experiment %s)", run_id, params.mlflow.experiment)
    return run_id


def log_to_pipeline_run(params: Params, root: Path, prefix: str, metrics: dict, artifacts: list[Path] = ()) -> str | None:
    """Add a later stage's numbers and files to the run that train opened."""
    if not params.mlflow.enabled:
        return None
    run_id = pipeline_run_id(root)
    from mlflow.entities import Metric

    client = connect(params.mlflow, root)
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
