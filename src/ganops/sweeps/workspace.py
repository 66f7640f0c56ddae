"""One trial's pipeline, in a workspace of its own, saved as a DVC experiment.

Each trial gets a git worktree under .dvc/tmp/sweeps/<study>/ holding the project as the sweep found
it (the commit and the workspace's uncommitted changes to tracked files, dvc.lock included), the main
workspace's DVC cache, the stages before train checked out from that cache (built once by the sweep),
and its own params.yaml. There it runs `dvc repro train` and, unless the trial was pruned, `dvc repro
evaluate`, with its own checkpoints, reports and MLflow run; then `dvc exp save` records it as the
experiment ``name`` (`dvc exp show` lists it; `dvc exp apply` restores it) and the worktree is
removed. Outputs and dvc.lock entries of the stages the trial did not run are removed first, so an
experiment never shows another run's numbers. Concurrent trials share only the DVC cache
(content-addressed, safe to share) and the git refs, whose changes (worktrees, saved experiments)
take the project's lock.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ganops.metrics.report import EvaluationReport
from ganops.paths import ProjectPaths
from ganops.sweeps.spec import Scalar, SweepError
from ganops.tools import run_tool, tool, tool_env
from ganops.training.report import TrainSummary

log = logging.getLogger(__name__)
TARGET = "evaluate"  # a trial's pipeline ends with its evaluation; export and register are the best trial's
FIRST_TRAINED = "train"  # the stages this one depends on are shared by every trial


def checked(result: subprocess.CompletedProcess, what: str) -> str:
    if result.returncode != 0:
        raise SweepError(f"{what} failed: {(result.stderr + result.stdout).strip()[-800:] or f'exit {result.returncode}'}")
    return result.stdout


@dataclass(frozen=True)
class Pipeline:
    """What every trial of a sweep shares, read once when the sweep starts."""

    root: Path
    head: str  # the commit the experiments are based on (`dvc exp show` lists them under it)
    baseline: str  # a commit of the workspace as the sweep found it: HEAD plus its uncommitted tracked changes
    cache_dir: str  # the main workspace's DVC cache, shared by every trial
    shared_stages: tuple[str, ...]  # the stages before train: built once, checked out in every trial
    outs_after: dict[str, tuple[str, ...]]  # stage -> its outputs, for the target and every stage after it
    env: dict[str, str]  # set for every trial's processes (the MLflow store, a git identity when none is set)
    # dvc.lock and the shared stages' outputs that DVC's cache does not hold, as the sweep found them
    # (committed or not: a project whose dvc.lock was never committed sweeps too)
    state_files: dict[str, bytes]
    uncached: tuple[str, ...]  # the outputs git holds, not DVC's cache (metrics, logs): saved with the experiment

    @classmethod
    def prepare(cls, root: Path, env: dict[str, str]) -> Pipeline:
        """Build the stages before train in the workspace at ``root`` (`dvc repro`: DVC skips what is up
        to date) and take the workspace as it then is. Call it under the project's lock."""
        import networkx as nx
        from dvc.repo import Repo

        root = Path(root).resolve()
        head = checked(run_tool(["git", "rev-parse", "--verify", "HEAD"], root),
                       "git rev-parse HEAD (a sweep's experiments need a commit to start from)").strip()
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            by_name = {stage.name: stage for stage in graph.nodes}
            for needed in (FIRST_TRAINED, TARGET):
                if needed not in by_name:
                    raise SweepError(f"dvc.yaml has no stage {needed!r}: a trial trains and evaluates")
            shared = tuple(sorted(stage.name for stage in nx.descendants(graph, by_name[FIRST_TRAINED])))
            after = [by_name[TARGET], *nx.ancestors(graph, by_name[TARGET])]
            outs = {stage.name: tuple(str(out.def_path) for out in stage.outs) for stage in after}
            uncached = [str(out.def_path) for name in shared for out in by_name[name].outs if not out.use_cache]
            trial_uncached = tuple(str(out.def_path) for stage in (by_name[FIRST_TRAINED], by_name[TARGET], *after)
                                   for out in stage.outs if not out.use_cache)
        if shared:
            checked(run_tool([tool("dvc"), "repro", *shared], root, env), f"dvc repro {' '.join(shared)}")
        stash = checked(run_tool(["git", "stash", "create"], root), "git stash create").strip()
        cache_dir = checked(run_tool([tool("dvc"), "cache", "dir"], root), "dvc cache dir").strip()
        state = {}
        for name in ["dvc.lock", *uncached]:
            path = root / name
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
            state |= {f.relative_to(root).as_posix(): f.read_bytes() for f in files}
        return cls(root, head, stash or head, cache_dir, shared, outs, env, state, tuple(uncached) + trial_uncached)

    @property
    def workspaces(self) -> Path:
        return ProjectPaths(self.root).sweep_workspaces


@dataclass(frozen=True)
class Slot:
    """What one running trial may use: its CPU cores and, on a GPU machine, one GPU."""

    cpus: tuple[int, ...]
    gpu: int | None = None

    def env(self) -> dict[str, str]:
        threads = str(len(self.cpus))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        return env


class TrialProcesses:
    """The process groups of the trials running now, so that an interrupted sweep stops them all."""

    def __init__(self) -> None:
        self._lock, self._groups, self.stopped = threading.Lock(), set(), threading.Event()

    @contextmanager
    def process(self, args: list[str], cwd: Path, env: dict[str, str], log_file: io.TextIOBase, cpus: tuple[int, ...]):
        with self._lock:
            if self.stopped.is_set():
                raise SweepError("the sweep is stopping")
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own group: stopped as one, untouched by a terminal's ^C
            self._groups.add(proc.pid)
        try:
            if cpus and hasattr(os, "sched_setaffinity"):
                try:
                    os.sched_setaffinity(proc.pid, cpus)  # its children (the stage commands) inherit the cores
                except OSError:
                    pass
            yield proc
        finally:
            with self._lock:
                self._groups.discard(proc.pid)

    def stop_all(self) -> None:
        self.stopped.set()
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@dataclass
class Outcome:
    """How a trial's pipeline ended."""

    state: Literal["complete", "pruned", "failed"]
    experiment: str
    train: TrainSummary | None = None  # reports/train.json
    report: EvaluationReport | None = None  # reports/eval.json (complete only)
    error: str = ""
    log_path: Path | None = None


class ProjectLock:
    """Changes to the project's git refs and worktrees, one at a time: across this process's trial
    threads and across sweep processes on this machine."""

    def __init__(self, root: Path) -> None:
        from filelock import FileLock

        folder = ProjectPaths(root).sweep_workspaces
        folder.mkdir(parents=True, exist_ok=True)
        self._thread, self._file = threading.Lock(), FileLock(str(folder / ".project.lock"), timeout=600)

    def __enter__(self) -> ProjectLock:
        self._thread.acquire()
        try:
            self._file.acquire()
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._file.release()
        self._thread.release()


def write_overrides(params_file: Path, overrides: dict[str, Scalar]) -> None:
    """Set dotted keys in params.yaml, keeping its comments and layout (ruamel, as DVC does)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True

    def represent_float(representer, value: float):
        text = repr(value)
        if "e" in text and "." not in text:  # 1e-05 is a string to YAML 1.1 readers (PyYAML); 1.0e-05 is a float
            text = text.replace("e", ".0e")
        return representer.represent_scalar("tag:yaml.org,2002:float", text)

    yaml.representer.add_representer(float, represent_float)
    tree = yaml.load(params_file.read_text())
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    buffer = io.StringIO()
    yaml.dump(tree, buffer)
    params_file.write_text(buffer.getvalue())


def run_trial(pipeline: Pipeline, lock: ProjectLock, processes: TrialProcesses, study: str, trial_number: int, name: str,
              overrides: dict[str, Scalar], env: dict[str, str], slot: Slot) -> Outcome:
    """Run the pipeline up to the evaluation with ``overrides`` in a worktree of its own, save it as
    the DVC experiment ``name`` and remove the worktree. A failure of any step is an outcome, not an
    exception (but for a sweep that is stopping)."""
    folder = pipeline.workspaces / study
    tree, log_path = folder / name, folder / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    outcome = Outcome("failed", name, log_path=log_path)
    try:
        _add_worktree(pipeline, lock, tree)
        write_overrides(tree / "params.yaml", overrides)
        full_env = tool_env({"DVC_EXP_NAME": name, **pipeline.env, **slot.env(), **env})
        with open(log_path, "a") as log_file:
            for stage in (FIRST_TRAINED, TARGET):
                log_file.write(f"$ dvc repro {stage}\n")
                log_file.flush()
                with processes.process([tool("dvc"), "repro", stage], tree, full_env, log_file, slot.cpus) as proc:
                    code = proc.wait()
                if processes.stopped.is_set():
                    raise SweepError("the sweep was interrupted")
                if code != 0:
                    outcome.error = _error_of(log_path, stage, code)
                    return outcome
                if stage == FIRST_TRAINED:
                    outcome.train = TrainSummary.load(ProjectPaths(tree).train_report)
                    ran = outcome.train.sweep_trial
                    if ran is None or ran.trial != trial_number or ran.study != study:
                        outcome.error = f"`dvc repro {stage}` did not train this trial (reports/train.json: {ran})"
                        return outcome
                    if ran.pruned:
                        outcome.state = "pruned"
                        break
        if outcome.state != "pruned":
            outcome.report = EvaluationReport.load(ProjectPaths(tree).eval_report)
            outcome.state = "complete"
        not_run = [stage for stage in pipeline.outs_after if stage != TARGET or outcome.state == "pruned"]
        for stage in not_run:  # an experiment shows only numbers this trial made, and locks only stages it ran
            for out in pipeline.outs_after[stage]:
                path = tree / out
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        _forget_stages(tree / "dvc.lock", not_run)
        ran = [FIRST_TRAINED] + ([TARGET] if outcome.state == "complete" else [])
        # git's part of the experiment, committed or not in the project: params, the lock, the metrics
        kept = [f for f in ("params.yaml", "dvc.lock", *pipeline.uncached) if (tree / f).exists()]
        with lock:  # the outputs of the stages that ran go to the cache; the experiment is a git commit
            saved = run_tool([tool("dvc"), "exp", "save", "--force", "--name", name,
                              *(arg for f in kept for arg in ("--include-untracked", f)), *ran],
                             tree, pipeline.env, timeout=600)
        if saved.returncode != 0:
            outcome.state, outcome.error = "failed", f"dvc exp save failed: {(saved.stderr or saved.stdout).strip()[-600:]}"
        return outcome
    except Exception as error:  # a step that failed, a report that can't be read: this trial failed, not the sweep
        if processes.stopped.is_set():
            raise SweepError("the sweep was interrupted") from None
        outcome.state = "failed"
        outcome.error = str(error) if isinstance(error, SweepError) else f"{type(error).__name__}: {str(error)[:600]}"
        return outcome
    finally:
        _remove_worktree(pipeline, lock, tree)


def remove_stale_worktrees(pipeline: Pipeline, lock: ProjectLock, study: str, running: set[str]) -> list[str]:
    """Remove the worktrees of this study whose trials are no longer running (left by a sweep process
    that was killed); ``running``: the experiment-name prefixes of the trials running now."""
    folder, removed = pipeline.workspaces / study, []
    for tree in sorted(folder.iterdir()) if folder.is_dir() else []:
        if tree.name == "logs" or not tree.is_dir() or any(tree.name.startswith(name) for name in running):
            continue
        _remove_worktree(pipeline, lock, tree)
        removed.append(tree.name)
    return removed


def _forget_stages(lock_file: Path, stages: list[str]) -> None:
    """Drop stages from a dvc.lock: they did not run in this trial (DVC then runs them when asked)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    tree = yaml.load(lock_file.read_text())
    for stage in stages:
        (tree.get("stages") or {}).pop(stage, None)
    buffer = io.StringIO()
    yaml.dump(tree, buffer)
    lock_file.write_text(buffer.getvalue())


def _add_worktree(pipeline: Pipeline, lock: ProjectLock, tree: Path) -> None:
    root = pipeline.root
    with lock:
        if tree.exists():  # left by a sweep that was killed: its trial is failed and retried under a new name
            _remove_worktree_locked(root, tree)
        checked(run_tool(["git", "worktree", "add", "--detach", "--quiet", str(tree), pipeline.baseline], root),
                "git worktree add")
    if pipeline.baseline != pipeline.head:  # the workspace's changes as changes, on top of the experiments' commit
        checked(run_tool(["git", "reset", "--quiet", "--soft", pipeline.head], tree), "git reset --soft")
        checked(run_tool(["git", "reset", "--quiet"], tree), "git reset")
    for name, content in pipeline.state_files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    config = root / ".dvc" / "config.local"
    if config.exists():
        shutil.copy(config, tree / ".dvc" / "config.local")
    checked(run_tool([tool("dvc"), "cache", "dir", "--local", pipeline.cache_dir], tree), "dvc cache dir")
    # the shared stages' outputs (a million prepared images) are linked from the cache, not copied per trial
    checked(run_tool([tool("dvc"), "config", "--local", "cache.type", "reflink,hardlink,symlink,copy"], tree),
            "dvc config cache.type")
    if pipeline.shared_stages:
        checked(run_tool([tool("dvc"), "checkout", "--quiet", *pipeline.shared_stages], tree, pipeline.env),
                "dvc checkout of the shared stages")


def _remove_worktree(pipeline: Pipeline, lock: ProjectLock, tree: Path) -> None:
    with lock:
        _remove_worktree_locked(pipeline.root, tree)


def _remove_worktree_locked(root: Path, tree: Path) -> None:
    run_tool(["git", "worktree", "remove", "--force", "--force", str(tree)], root)
    if tree.exists():
        shutil.rmtree(tree, ignore_errors=True)
    run_tool(["git", "worktree", "prune"], root)


def _error_of(log_path: Path, stage: str, code: int) -> str:
    """The lines a stage's failure printed last (ganops' own 'error:' lines first)."""
    lines = log_path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error: ") or line.startswith("ERROR: ")]
    tail = " | ".join((errors or lines)[-3:])[-800:]
    # a signal ended the stage's command: DVC says -N when the command was the shell's last (bash execs it),
    # 128+N when a shell that forks (dash, the usual /bin/sh) reported it
    killed = re.search(r"exited with (-\d+|1(?:29|[3-8]\d|9[0-2]))\b", tail)
    if killed or code < 0:
        number = abs(int(killed.group(1))) % 128 if killed else -code
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        tail = f"killed by {name}: {tail}"
    return f"`dvc repro {stage}` exited with {code}: {tail}"
