"""Prefect flows over the real DVC pipeline, against a real temporary Prefect API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port, make_repo, output_of, repo_from, sh, spawn, stop, wait_for_http

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def set_param(root: Path, section: str, key: str, value) -> str:
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return original


def task_runs(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name: run for run in runs}

    return asyncio.run(read())


@pytest.fixture(scope="module")
def built(prefect_api, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A repository the flow has run once: (root, that run's stage results). Each test that changes it
    puts params.yaml back, so every test starts from this state (the fix-resumes test checks it)."""
    from ganops.flows import gan_pipeline

    root = make_repo(tmp_path_factory.mktemp("repo"))
    return root, gan_pipeline(repo=str(root))


def test_flow_runs_every_stage_then_skips_all_from_cache(built):
    from ganops.flows import gan_pipeline

    root, first = built
    assert [r["stage"] for r in first] == ["prepare", "train_evaluator", "reference_stats", "train", "evaluate", "export",
                                           "register"]
    assert all(r["ran"] for r in first)
    assert "up to date" in sh(str(Path(sys.executable).parent / "dvc"), "status", cwd=root).stdout
    second = gan_pipeline(repo=str(root))
    assert not any(r["ran"] for r in second)

    from prefect.client.orchestration import get_client

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    summaries = [a for a in asyncio.run(artifact()) if a.key == "gan-pipeline-summary"]
    assert summaries and "skipped (cached)" in summaries[0].data and "MLflow run" in summaries[0].data


def test_failing_stage_fails_the_flow_with_its_message_and_the_fix_resumes_from_cache(built):
    from ganops.flows import gan_pipeline

    root, _ = built
    original = set_param(root, "eval", "prc_neighborhood", 500)  # more neighbours than samples: an input error
    try:
        state = gan_pipeline(repo=str(root), return_state=True)
    finally:
        (root / "params.yaml").write_text(original)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"stage 'evaluate' failed: eval.num_samples=200.* must all exceed"):
        state.result()
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["dvc repro evaluate"].run_count == 1  # an input error is not retried
    resumed = gan_pipeline(repo=str(root))
    assert {r["stage"]: r["ran"] for r in resumed} == {"prepare": False, "train": False, "train_evaluator": False,
                                                       "reference_stats": False, "evaluate": False, "export": False,
                                                       "register": False}


def test_transient_failure_is_retried(built):
    from ganops.flows import gan_pipeline

    root, _ = built
    dead = f"http://127.0.0.1:{free_port()}"
    original = set_param(root, "mlflow", "tracking_uri", dead)  # only register lists the mlflow params
    try:
        state = gan_pipeline(repo=str(root), retries=1, retry_delay_s=0, return_state=True)
    finally:
        (root / "params.yaml").write_text(original)
    assert state.is_failed()
    with pytest.raises(Exception, match="stage 'register' failed: MLflow tracking store .* is unreachable"):
        state.result()
    assert task_runs(state.state_details.flow_run_id)["dvc repro register"].run_count == 2
    # the failed stage left the registered outputs as they were: nothing is stale once the params are back
    assert "up to date" in sh(str(Path(sys.executable).parent / "dvc"), "status", cwd=root).stdout


def prefect_call(method: str, url: str, **kwargs) -> dict:
    """A Prefect API call, retried while the server answers 5xx: its SQLite database is briefly locked
    while the scheduler inserts a new deployment's upcoming runs (seen on a loaded CI machine)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.request(method, url, timeout=10, **kwargs)
        except httpx.TransportError as error:
            response, failure = None, repr(error)
        else:
            if response.status_code < 500:
                assert response.is_success, f"{method.upper()} {url}: {response.status_code} {response.text[:500]}"
                return response.json()
            failure = f"{response.status_code} {response.text[:500]}"
        assert time.monotonic() < deadline, f"{method.upper()} {url}: still failing after 60 s: {failure}"
        time.sleep(1)


def test_scheduled_deployment_reads_back_and_runs(built, tmp_path):
    """`ganops flow serve --cron` against a real `prefect server`; a run triggered from the deployment
    executes the stages: on a copy of the repository the flow built, with a new train.seed (a param of
    train and export), so that the stages from train on run again."""
    root = Path(shutil.copytree(built[0], tmp_path / "repo", symlinks=True))
    set_param(root, "train", "seed", 1)
    assert set(json.loads(sh(str(Path(sys.executable).parent / "dvc"), "status", "--json", cwd=root).stdout)) == {
        "train", "export"}
    home = tmp_path / "prefect_home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    env.pop("PREFECT_API_KEY", None)
    server = spawn([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   tmp_path / "prefect-server.log", env=env)
    serve = None
    try:
        wait_for_http(api + "/health", server)
        serve = spawn([str(bin_dir / "ganops"), "flow", "serve", "--cron", "0 2 * * *", "--repo", str(root)],
                      tmp_path / "flow-serve.log", cwd=root, env=env)
        deployment = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and deployment is None:
            assert serve.poll() is None, output_of(serve)
            response = httpx.get(f"{api}/deployments/name/gan-pipeline/ganops-nightly", timeout=5)
            deployment = response.json() if response.status_code == 200 else time.sleep(0.5)
        assert deployment is not None
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
        run = prefect_call("post", f"{api}/deployments/{deployment['id']}/create_flow_run", json={})
        deadline = time.monotonic() + 400
        state = None
        while time.monotonic() < deadline:
            state = prefect_call("get", f"{api}/flow_runs/{run['id']}")["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        assert state == "COMPLETED"
        assert (root / "reports" / "register.json").exists() and (root / "dvc.lock").exists()
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        assert lock["train"]["params"]["params.yaml"]["train"]["seed"] == 1  # the run trained with the new seed
        assert json.loads((root / "reports" / "register.json").read_text())["version"] == "2"  # and registered it
    finally:
        for process in (serve, server):
            if process is not None:
                stop(process)


def test_sweep_flow_runs_a_sweep_and_leaves_its_ranking(prefect_api, tmp_path, shared_stages_repo):
    """`ganops flow sweep` is `ganops sweep` as a flow run: the trials run, the ranking is its artifact."""
    from prefect.client.orchestration import get_client

    from ganops.flows import gan_sweep

    root = repo_from(shared_stages_repo, tmp_path, {"train": {"steps": 20, "eval_every": 10, "eval_samples": 40},
                                                    "eval": {"draws": 4}})
    (root / "one.yaml").write_text("study: one\ntrials: 1\npruner: {name: none}\nspace: {train.lr_g: {choices: [0.01]}}\n")
    result = gan_sweep(spec=str(root / "one.yaml"), repo=str(root), register_best=False)
    assert [(t["trial"], t["state"]) for t in result["trials"]] == [(0, "complete")]
    assert result["registered"] is None and not (root / "reports" / "register.json").exists()

    async def ranking():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    (artifact,) = [a for a in asyncio.run(ranking()) if a.key == "gan-sweep-ranking"]
    assert "one-t000" in artifact.data and "| 1 | 0 | complete |" in artifact.data

