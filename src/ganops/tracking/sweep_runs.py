"""A sweep in MLflow: one parent run for the study, one child run per trial (and, when a trial trains
several seeds, one grandchild run per seed). The trial's pipeline logs into its run (the train stage
is handed its id), so the MLflow UI compares the trials' params, in-training curves and final
metrics side by side; this module opens and closes those runs and records each trial's state."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ganops.config import MlflowParams
from ganops.tracking.store import connect, experiment_id

SWEEP_TAG = "ganops.sweep"  # the study's name, on the parent and every trial run
STATE_TAG = "ganops.sweep.state"  # running | complete | pruned | failed
# MLflow's run status for each trial state (a pruned trial was stopped on purpose: KILLED)
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


def _params(overrides: dict) -> list:
    from mlflow.entities import Param

    return [Param(key, json.dumps(value) if isinstance(value, (list, dict)) else str(value)) for key, value in overrides.items()]


def open_parent_run(cfg: MlflowParams, root: Path, study: str, spec_file: Path, storage: str) -> str:
    client = connect(cfg, root)
    run = client.create_run(experiment_id(client, cfg, root), run_name=f"sweep {study}",
                            tags={SWEEP_TAG: study, "ganops.sweep.storage": storage, STATE_TAG: "running"})
    client.log_artifact(run.info.run_id, str(spec_file), artifact_path="sweep")
    return run.info.run_id


def open_trial_run(cfg: MlflowParams, root: Path, study: str, parent_run_id: str, name: str, number: int,
                   overrides: dict, worker: str) -> str:
    """The trial's child run, holding the trial's params before anything trains (a trial that fails
    early is still in the comparison)."""
    client = connect(cfg, root)
    run = client.create_run(experiment_id(client, cfg, root), run_name=name, tags={
        "mlflow.parentRunId": parent_run_id, SWEEP_TAG: study, "ganops.sweep.trial": str(number),
        "ganops.sweep.worker": worker, STATE_TAG: "running"})
    client.log_batch(run.info.run_id, params=_params(overrides))
    return run.info.run_id


def end_trial_run(cfg: MlflowParams, root: Path, run_id: str, state: str, metrics: dict[str, float],
                  tags: dict[str, str], intermediate: dict[int, float] | None = None, log_file: Path | None = None) -> None:
    """Close a trial's run with its state, its sweep metrics (sweep/value, sweep/std, ...), and, when
    its pipeline logged no in-training curve (it failed first), the values the study received."""
    from mlflow.entities import Metric, RunTag

    client = connect(cfg, root)
    now = int(time.time() * 1000)
    batch = [Metric(f"sweep/{key}", float(value), now, 0) for key, value in metrics.items()]
    batch += [Metric("sweep/in_training", float(value), now, int(step)) for step, value in sorted((intermediate or {}).items())]
    client.log_batch(run_id, metrics=batch,
                     tags=[RunTag(STATE_TAG, state)] + [RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    if log_file is not None and log_file.exists():
        client.log_artifact(run_id, str(log_file), artifact_path="sweep")
    client.set_terminated(run_id, status=STATUS[state])


def end_parent_run(cfg: MlflowParams, root: Path, run_id: str, files: list[Path], metrics: dict[str, float],
                   tags: dict[str, str], finished: bool) -> None:
    """The ranked table (files) on the parent run; the run ends once the study has no trial left to run."""
    from mlflow.entities import Metric, RunTag

    client = connect(cfg, root)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"sweep/{k}", float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="sweep")
    if finished:
        client.set_tag(run_id, STATE_TAG, "finished")
        client.set_terminated(run_id, status="FINISHED")
