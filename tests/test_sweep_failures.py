"""Sweeps that go wrong, run as a user runs them on a real git + DVC repository with an MLflow store and
an Optuna study in sqlite: a trial killed mid-way, a sweep interrupted or killed with SIGKILL and
resumed, and two sweep processes sharing one study. (tests/test_sweeps.py runs the sweeps that go
right; the two files build their own projects, so pytest-xdist runs them side by side.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import repo_from
from ganops.sweeps.workspace import _error_of
from test_sweeps import GANOPS, GOOD, SWEPT, experiments, mlflow_runs, spec, study_trials, sweep


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_stages_repo) -> Path:
    """A git + DVC repository with SWEPT, its stages before train built (conftest's, shared)."""
    return repo_from(shared_stages_repo, tmp_path_factory.mktemp("sweep-failures"), SWEPT)


def _wait_for_training(root: Path, study: str, seconds: float = 120) -> int:
    """The pid of a trial's `ganops train` process, once it runs in its worktree."""
    worktrees = (root / ".dvc" / "tmp" / "sweeps" / study).resolve()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = Path(os.readlink(proc / "cwd"))
            except (OSError, ValueError):
                continue
            if b"train" in cmdline and any(part.endswith(b"ganops") for part in cmdline) and worktrees in cwd.parents:
                return int(proc.name)
        time.sleep(0.05)
    raise AssertionError(f"no trial trained under {worktrees} within {seconds} s")


@pytest.mark.parametrize("said", ["exited with -9", "exited with 137"])  # bash execs the command; dash forks
def test_a_stage_killed_by_a_signal_is_named(tmp_path, said):
    log = tmp_path / "train.log"
    log.write_text(f"step 10\nERROR: failed to reproduce 'train': failed to run: ganops train, {said}\n")
    assert "killed by SIGKILL" in _error_of(log, "train", 255)
    log.write_text("ERROR: failed to reproduce 'train': failed to run: ganops train, exited with 1\n")
    assert "killed" not in _error_of(log, "train", 255)


@pytest.mark.system
def test_a_killed_trial_is_failed_and_the_sweep_goes_on(project):
    spec_file = spec(project, "kill.yaml", study="kill", trials=2, pruner={"name": "none"}, register=False,
                     enqueue=[{"train.lr_g": GOOD}, {"train.lr_g": 3e-3}])
    # DVC runs a stage in $SHELL: /bin/sh (dash) forks the command, so the kill reaches DVC as exit 137
    driver = subprocess.Popen([GANOPS, "sweep", str(spec_file)], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "SHELL": "/bin/sh"})
    os.kill(_wait_for_training(project, "kill"), signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    killed, survivor = study_trials(project, "kill")
    assert killed.state.name == "FAIL" and "SIGKILL" in killed.user_attrs["error"], killed.user_attrs
    assert survivor.state.name == "COMPLETE"  # the sweep went on
    runs = {r.info.run_name: r for r in mlflow_runs(project) if r.data.tags.get("ganops.sweep") == "kill"}
    assert runs["kill-t000"].info.status == "FAILED" and "SIGKILL" in runs["kill-t000"].data.tags["error"]
    assert "kill-t000" not in experiments(project) and "kill-t001" in experiments(project)
    assert not list((project / ".dvc" / "tmp" / "sweeps" / "kill").glob("kill-t*"))  # no worktree left behind


@pytest.mark.system
def test_an_interrupted_sweep_queues_its_running_trial_and_resumes_it(project):
    spec_file = spec(project, "stop.yaml", study="stop", trials=1, pruner={"name": "none"}, register=False,
                     enqueue=[{"train.lr_g": 3e-4}])
    driver = subprocess.Popen([GANOPS, "sweep", str(spec_file)], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    _wait_for_training(project, "stop")
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "run the same command to resume" in output, output
    (stopped, queued) = study_trials(project, "stop")
    assert stopped.state.name == "FAIL" and stopped.user_attrs["interrupted"]
    assert queued.state.name == "WAITING" and queued.params == stopped.params
    resumed = sweep(project, str(spec_file))
    assert "0 of 1 trials done" in resumed.stdout  # the interrupted trial did not use the budget
    stopped, rerun = study_trials(project, "stop")
    assert rerun.state.name == "COMPLETE" and rerun.params == {"train.lr_g": 3e-4}


@pytest.mark.system
def test_a_sweep_killed_with_sigkill_is_resumed_at_once(project):
    """Its trial, left marked running, is failed and queued again by the next run on this machine (its
    process is gone), not after Optuna's heartbeat grace period; the orphaned worktree goes."""
    spec_file = spec(project, "gone.yaml", study="gone", trials=1, pruner={"name": "none"}, register=False,
                     enqueue=[{"train.lr_g": 3e-3}])
    driver = subprocess.Popen([GANOPS, "sweep", str(spec_file)], cwd=project, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    _wait_for_training(project, "gone")
    driver.kill()
    driver.wait(timeout=60)
    resumed = sweep(project, str(spec_file))
    assert "trials [0] were left running by a sweep process of this machine that is gone" in resumed.stdout
    abandoned, rerun = study_trials(project, "gone")
    assert abandoned.state.name == "FAIL" and rerun.state.name == "COMPLETE" and rerun.params == abandoned.params
    assert not (project / ".dvc" / "tmp" / "sweeps" / "gone" / "gone-t000").exists()
    runs = {r.info.run_name: r for r in mlflow_runs(project) if r.data.tags.get("ganops.sweep") == "gone"}
    assert runs["gone-t000"].info.status == "FAILED" and "died" in runs["gone-t000"].data.tags["error"]


@pytest.mark.system
def test_two_sweep_processes_share_one_study(project, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    spec_file = spec(project, "shared.yaml", study="shared", trials=4, pruner={"name": "none"}, register=False,
                     storage=storage, space={"train.lr_g": {"low": 1e-4, "high": 1e-2, "log": True}})
    workers = [subprocess.Popen([GANOPS, "sweep", str(spec_file), "--workers", "1"], cwd=project,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = study_trials(project, "shared", storage)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    # the budget is shared: 4, or one more when both processes started a trial as the third one finished
    assert 4 <= len(done) <= 5 and len(done) == len(trials)
    assert len({t.user_attrs["worker"] for t in done}) == 2, "both processes ran trials"
    assert len({t.params["train.lr_g"] for t in done}) == len(done)  # no point proposed twice
    shown = experiments(project)
    assert all(f"shared-t{t.number:03d}" in shown for t in done)
