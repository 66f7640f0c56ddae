"""Connecting to the MLflow tracking store: the project's sqlite file by default, a server when
MLFLOW_TRACKING_URI (or mlflow.tracking_uri) says so, with bounded retries and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ganops import GanopsError
from ganops.config import MlflowParams
from ganops.paths import cache_dir

ONNX_DIGEST_TAG = "onnx_sha256"  # on every registered version; every download of it is checked against it


class TrackingError(GanopsError):
    """The tracking server or store can't be reached or used: worth retrying later."""

    exit_code = 75


def tracking_uri(cfg: MlflowParams, root: Path) -> str:
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def artifact_location(root: Path) -> str:
    """Artifacts of the embedded store live in the project folder, beside mlflow.db."""
    return (Path(root) / "mlartifacts").resolve().as_uri()


@contextmanager
def http_settings(cfg: MlflowParams) -> Iterator[None]:
    """MLflow's HTTP retry policy for the calls made inside this block, and only those.

    MLflow reads it from the environment at each request (its defaults retry for minutes); the user's
    own values are put back afterwards, so nothing leaks into the rest of the process."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.max_retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.timeout_s)}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ScopedClient:
    """An MlflowClient whose every call runs under :func:`http_settings`."""

    def __init__(self, client, cfg: MlflowParams) -> None:
        self._client, self._cfg = client, cfg

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with http_settings(self._cfg):
                return attribute(*args, **kwargs)

        return call


def connect(cfg: MlflowParams, root: Path) -> ScopedClient:
    """An MlflowClient on the configured store, checked reachable (bounded retries)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, root)
    exported = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in exported.items():  # set_*_uri also export these; keep the user's environment as it was
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    client = ScopedClient(MlflowClient(tracking_uri=uri, registry_uri=uri), cfg)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # connection refused, timeouts, HTTP errors, a broken sqlite file
        raise TrackingError(
            f"MLflow tracking store {uri} is unreachable after {cfg.max_retries} retries: "
            f"{type(error).__name__}: {str(error)[:300]}. Outputs already written are kept; fix the store "
            f"(or set mlflow.enabled: false) and re-run the stage."
        ) from None
    return client


def experiment_id(client, cfg: MlflowParams, root: Path) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    uri = tracking_uri(cfg, root)
    # a local store keeps artifacts in the project; a server decides where its artifacts go
    location = artifact_location(root) if uri.startswith(("sqlite:", "file:")) else None
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent stage
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def read_run_file(path: Path) -> dict:
    if not path.exists():
        raise TrackingError(f"{path} is missing; run the train stage first (`dvc repro train`)")
    return json.loads(path.read_text())


def pipeline_run_id(run_file: Path) -> str:
    """The id of the MLflow run that train opened for this pipeline execution (recorded in ``run_file``)."""
    run_id = read_run_file(run_file).get("run_id")
    if not run_id:
        raise TrackingError(f"{run_file} has no run id: re-run train with mlflow.enabled: true")
    return run_id


def lock_path(uri: str) -> Path:
    """A lock file that every register process using this store on this machine agrees on."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".register.lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"register-{digest}.lock"
