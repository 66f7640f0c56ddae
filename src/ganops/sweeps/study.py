"""Running a sweep: the Optuna study, its trials on this machine's cores or GPUs, the ranked result,
and the registration of the best trial.

    ganops sweep sweeps/default_recipe.yaml --workers 2

1. The stages every trial shares (those before train) are built once, with `dvc repro`, in the
   project's workspace; the workspace as it is then (commit and uncommitted tracked changes) is what
   every trial starts from.
2. The study is created in its storage, or loaded: re-running the same command resumes it, and
   processes on other machines that name the same storage (PostgreSQL) join it. The first creates the
   MLflow parent run; the study's user attributes keep its id and the sweep file's identity.
3. ``study.optimize`` runs the trials, ``--workers`` at a time, each on its own cores (or GPU): a
   trial is a DVC experiment run in a worktree of its own (ganops.sweeps.workspace) whose train stage
   reports every in-training evaluation to the study and stops when the pruner says so. A trial
   that fails or is killed is recorded as failed and the sweep goes on; one stopped by an interrupted
   sweep is queued again for the next run.
4. The budget counts trials that completed, were pruned or failed (those retried do not count);
   Optuna's heartbeat fails the trials of a sweep process that died, and queues them again.
5. Once no trial is left to run, the trials are ranked with the champion gate's noise test, from
   ganops.noise (reports/sweep.json, the parent run), and the best is registered: `dvc exp apply` of
   its experiment and `dvc repro` in the workspace, so export and register run on it and the champion
   gate decides.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ganops import GanopsError
from ganops.config import Params, load_params
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.noise import seed_mean
from ganops.paths import ProjectPaths
from ganops.sweeps.ranking import rank, table_markdown, trial_row
from ganops.sweeps.spec import SweepError, SweepSpec
from ganops.sweeps.workspace import (
    Outcome,
    Pipeline,
    ProjectLock,
    Slot,
    TrialProcesses,
    checked,
    remove_stale_worktrees,
    run_trial,
)
from ganops.tools import run_tool, tool
from ganops.tracking import sweep_runs
from ganops.tracking.registry import RegistryDecision
from ganops.tracking.store import tracking_uri
from ganops.trial import TRIAL_ENV, TrialContext, make_pruner, open_storage, redacted, requeue

log = logging.getLogger(__name__)
HEARTBEAT_S, GRACE_S = 10, 60  # a trial whose process sent no heartbeat for GRACE_S is failed and queued again
SPEC_ATTR, PARENT_ATTR, REGISTERED_ATTR = "ganops.spec", "ganops.mlflow_parent_run_id", "ganops.registered"


class TrialFailed(GanopsError):
    """A trial's pipeline failed (Optuna records the trial as failed and the sweep goes on)."""


class SweepInterrupted(GanopsError):
    exit_code = 130


def default_storage(root: Path) -> str:
    return f"sqlite:///{ProjectPaths(root).sweep_storage.resolve()}"


def plan_slots(workers: int, params: Params) -> list[Slot]:
    """One slot per worker: on a GPU machine one GPU each, and the cores split evenly either way."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = 0
    if params.train.device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and workers > gpus:
        raise SweepError(f"--workers {workers} but {gpus} GPU(s): one trial per GPU, so at most {gpus}")
    if not gpus and workers > len(cpus):
        raise SweepError(f"--workers {workers} on {len(cpus)} CPU cores would oversubscribe them: at most {len(cpus)} "
                         "(each trial gets its own cores)")
    per = max(1, len(cpus) // workers)
    return [Slot(tuple(cpus[i * per:(i + 1) * per]) or tuple(cpus), i if gpus else None) for i in range(workers)]


def running(study) -> int:
    return sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))


def fail_dead_local_trials(study) -> list[int]:
    """Trials still marked running whose sweep process, on this machine, is gone (killed with -9):
    failed and queued again now, without waiting for Optuna's heartbeat to notice."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        study.tell(trial.number, state=TrialState.FAIL)
        requeue(max_retry=3)(study, trial)
        failed.append(trial.number)
    return failed


def counted(study) -> int:
    """Trials that used the budget: completed, pruned, or failed and not queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return sum(t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and t.number not in retried)
               for t in trials)


def _trial_env(params: Params, root: Path) -> dict[str, str]:
    """What every trial's processes need beyond the environment: the project's MLflow store by URI (a
    worktree's own default store would be lost with it) and a git identity for `dvc exp save`."""
    env = {}
    if params.mlflow.enabled and not params.mlflow.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri(params.mlflow, root)
    if not run_tool(["git", "config", "user.email"], root).stdout.strip():
        env |= {"GIT_AUTHOR_NAME": "ganops sweep", "GIT_AUTHOR_EMAIL": "ganops@localhost",
                "GIT_COMMITTER_NAME": "ganops sweep", "GIT_COMMITTER_EMAIL": "ganops@localhost"}
    return env


def _sampler(spec: SweepSpec, seed: int):
    import optuna

    if spec.sampler.name == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running in parallel count as bad guesses, so workers don't propose the same point
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.n_startup_trials, constant_liar=True)


def open_study(spec: SweepSpec, spec_file: Path, url: str, params: Params, root: Path):
    """Create the study (this process then also opens the MLflow parent run) or join the one there."""
    import optuna

    storage = open_storage(url, HEARTBEAT_S, GRACE_S, requeue(max_retry=3))
    pruner = make_pruner(spec.pruner)
    try:  # creating the study is atomic in its storage: exactly one process creates it
        study = optuna.create_study(study_name=spec.study, storage=storage, direction="minimize", pruner=pruner,
                                    sampler=_sampler(spec, spec.sampler.seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        # a joining process samples with its own seed: two processes with one seed propose the same points
        study = optuna.load_study(study_name=spec.study, storage=storage, pruner=pruner,
                                  sampler=_sampler(spec, spec.sampler.seed + 1 + os.getpid() % 100_000))
        created = False
    for point in spec.enqueue:  # on every start: points added to the file since are tried next
        study.enqueue_trial(point, skip_if_exists=True)
    if created:
        study.set_user_attr(SPEC_ATTR, {"identity": spec.identity(), "spec": spec.model_dump(mode="json")})
        parent = (sweep_runs.open_parent_run(params.mlflow, root, spec.study, spec_file, redacted(url))
                  if params.mlflow.enabled else None)
        study.set_user_attr(PARENT_ATTR, parent)
        return study, parent
    deadline = time.monotonic() + 60
    while SPEC_ATTR not in study.user_attrs or PARENT_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:  # its creator died before recording them
            study.set_user_attr(SPEC_ATTR, {"identity": spec.identity(), "spec": spec.model_dump(mode="json")})
            study.set_user_attr(PARENT_ATTR, sweep_runs.open_parent_run(params.mlflow, root, spec.study, spec_file, redacted(url))
                                if params.mlflow.enabled else None)
            break
        time.sleep(1)  # polling the storage: it has no way to wait for another process's write
    recorded = study.user_attrs[SPEC_ATTR]
    if recorded["identity"] != spec.identity():
        raise SweepError(f"study {spec.study!r} in {redacted(url)} was started from another sweep file (its space, "
                         f"fixed values, seeds or metric differ): {json.dumps(recorded['spec'])[:600]}. "
                         "Give this search another study name.")
    return study, study.user_attrs[PARENT_ATTR]


class Objective:
    """One trial: its point, its pipeline run(s) on a free slot, its record in the study and in MLflow."""

    def __init__(self, spec: SweepSpec, params: Params, root: Path, url: str, pipeline: Pipeline, lock: ProjectLock,
                 processes: TrialProcesses, slots: queue.Queue, parent_run_id: str | None) -> None:
        self.spec, self.params, self.root, self.url, self.pipeline = spec, params, root, url, pipeline
        self.lock, self.processes, self.slots, self.parent = lock, processes, slots, parent_run_id
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial) -> float:
        import optuna

        spec, mlflow = self.spec, self.params.mlflow
        name = f"{spec.study}-t{trial.number:03d}"
        overrides = {**spec.fixed, **spec.suggest(trial)}
        trial.set_user_attr("worker", self.worker)
        run_id = (sweep_runs.open_trial_run(mlflow, self.root, spec.study, self.parent, name, trial.number, overrides,
                                            self.worker) if mlflow.enabled else None)
        trial.set_user_attr("mlflow_run_id", run_id)
        seeds = spec.seeds.values if spec.seeds else [None]
        outcomes: list[Outcome] = []
        slot = self.slots.get()
        try:
            for index, seed in enumerate(seeds):
                experiment = name if seed is None else f"{name}-s{seed}"
                seeded = overrides if seed is None else {**overrides, spec.seeds.param: seed}
                seed_run = run_id if seed is None or not mlflow.enabled else sweep_runs.open_trial_run(
                    mlflow, self.root, spec.study, run_id, experiment, trial.number, seeded, self.worker)
                context = TrialContext(storage=self.url, study=spec.study, trial_number=trial.number, pruner=spec.pruner,
                                       report=index == 0, run_id=seed_run)
                log.info("trial %d (%s): %s", trial.number, experiment, seeded)
                try:
                    outcome = run_trial(self.pipeline, self.lock, self.processes, spec.study, trial.number, experiment,
                                        seeded, {TRIAL_ENV: context.model_dump_json()}, slot)
                except SweepError:  # the sweep is stopping: this trial runs again when it resumes
                    trial.set_user_attr("interrupted", True)
                    trial.set_user_attr("error", "interrupted: the sweep was stopped")
                    self._end(run_id, "failed", {}, {"error": "interrupted: the sweep was stopped"}, trial)
                    raise TrialFailed("interrupted: the sweep was stopped") from None
                outcomes.append(outcome)
                trial.set_user_attr("experiments", [o.experiment for o in outcomes])
                trial.set_user_attr("steps_trained", sum(o.train.steps_done for o in outcomes if o.train))
                if seed_run != run_id:
                    self._end_seed(seed_run, outcome)
                if outcome.state != "complete":
                    break
        finally:
            self.slots.put(slot)
        last = outcomes[-1]
        if last.state == "failed":
            trial.set_user_attr("error", last.error)
            self._end(run_id, "failed", {}, {"error": last.error}, trial, last.log_path)
            raise TrialFailed(f"trial {trial.number} ({last.experiment}) failed: {last.error}")
        if last.state == "pruned":
            pruned = last.train.sweep_trial.pruned
            trial.set_user_attr("pruned_at_step", pruned["step"])
            trial.set_user_attr("pruned_because", pruned["reason"])
            self._end(run_id, "pruned", {"pruned_at_step": pruned["step"]}, {"pruned_because": pruned["reason"]}, trial,
                      last.log_path)
            raise optuna.TrialPruned(pruned["reason"])
        return self._complete(trial, run_id, outcomes)

    def _complete(self, trial, run_id: str | None, outcomes: list[Outcome]) -> float:
        metric = self.spec.metric or outcomes[0].report.primary_metric
        seeds = []
        for outcome in outcomes:
            report = outcome.report
            value = report.metric(metric)
            if value is None:
                raise SweepError(f"the sweep's metric {metric!r} is not in reports/eval.json (it has "
                                 f"{sorted(report.model_extra or {})[:40]}); fix `metric:` in the sweep file")
            std = report.metric(f"{metric}_std")
            low, high = report.metric(f"{metric}_ci95_low"), report.metric(f"{metric}_ci95_high")
            seeds.append({"experiment": outcome.experiment, "value": value, "std": std,  # None: no interval
                          "ci95": [low, high] if low is not None else None})
        values = [s["value"] for s in seeds]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            error = f"{metric} is not a finite number: {values}"
            trial.set_user_attr("error", error)
            self._end(run_id, "failed", {}, {"error": error}, trial)
            raise TrialFailed(f"trial {trial.number}: {error}")
        if len(seeds) == 1:
            value, std, ci95 = values[0], seeds[0]["std"], seeds[0]["ci95"]
            interval = "the evaluation's own: half-sampling over its generated and reference images"
        else:  # the spread a user sees: over training seeds, each scored once
            mean = seed_mean(values)
            value, std, ci95 = mean.value, mean.std, [mean.low, mean.high]
            interval = f"t interval of the mean over {len(values)} training seeds"
        best = min(seeds, key=lambda s: s["value"])
        for key, attr in (("metric", metric), ("std", std), ("ci95", ci95), ("interval", interval), ("seeds", seeds),
                          ("best_experiment", best["experiment"])):
            trial.set_user_attr(key, attr)
        numbers = ({"value": value} | ({"std": std} if std is not None else {})
                   | ({"ci95_low": ci95[0], "ci95_high": ci95[1]} if ci95 else {}))
        self._end(run_id, "complete", numbers, {"metric": metric, "interval": interval}, trial, outcomes[-1].log_path)
        return value

    def _end(self, run_id: str | None, state: str, metrics: dict, tags: dict, trial, log_file: Path | None = None) -> None:
        said = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "; ".join(str(v) for v in tags.values())
        (log.info if state != "failed" else log.warning)("trial %d %s: %s", trial.number, state, said[:600])
        if run_id is None:
            return
        intermediate = None
        if state == "failed":  # its pipeline logged no curve: the values the study received stand in
            intermediate = next(t.intermediate_values for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        sweep_runs.end_trial_run(self.params.mlflow, self.root, run_id, state, metrics, tags, intermediate, log_file)

    def _end_seed(self, run_id: str | None, outcome: Outcome) -> None:
        if run_id is None:
            return
        metrics = {}
        if outcome.report is not None:
            std = outcome.report.std  # none without an interval: never written as 0
            metrics = {"value": outcome.report.value} | ({"std": std} if std is not None else {})
        sweep_runs.end_trial_run(self.params.mlflow, self.root, run_id, outcome.state, metrics,
                                 {"error": outcome.error} if outcome.error else {}, None, outcome.log_path)


def run_sweep(spec_file: Path, root: Path = Path("."), workers: int | None = None, storage: str | None = None,
              register: bool | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume, or join) the sweep of ``spec_file`` in the project at ``root``; returns
    reports/sweep.json's content."""
    import optuna

    root, spec_file = Path(root).resolve(), Path(spec_file)
    spec = SweepSpec.load(spec_file)
    params = load_params(root / "params.yaml")
    spec.check(params)
    workers = workers or spec.workers
    slots = queue.Queue()
    for slot in plan_slots(workers, params):
        slots.put(slot)
    url = storage or spec.storage or default_storage(root)
    lock = ProjectLock(root)
    with lock:
        echo("building the stages every trial shares (dvc repro of the stages before train)")
        pipeline = Pipeline.prepare(root, _trial_env(params, root))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # ganops logs each trial's end itself
    study, parent = open_study(spec, spec_file, url, params, root)
    processes = TrialProcesses()  # the trials' processes, stopped together on ^C
    objective = Objective(spec, params, root, url, pipeline, lock, processes, slots, parent)

    def stop_when_spent(study, _trial) -> None:
        # trials running anywhere (other threads, other processes) will use the rest of the budget
        if processes.stopped.is_set() or counted(study) + running(study) >= spec.trials:
            study.stop()

    dead = fail_dead_local_trials(study)
    if dead:
        echo(f"trials {dead} were left running by a sweep process of this machine that is gone: queued again")
    for trial in study.get_trials(deepcopy=False):
        if trial.number in dead and trial.user_attrs.get("mlflow_run_id") and params.mlflow.enabled:
            sweep_runs.end_trial_run(params.mlflow, root, trial.user_attrs["mlflow_run_id"], "failed", {},
                                     {"error": "its sweep process died (killed); the trial is queued again"})
    live = {f"{spec.study}-t{t.number:03d}" for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    remove_stale_worktrees(pipeline, lock, spec.study, live)
    remaining = max(0, spec.trials - counted(study) - running(study))
    echo(f"study {spec.study} ({redacted(url)}): {counted(study)} of {spec.trials} trials done, {running(study)} running "
         f"elsewhere; running {remaining} more, {workers} at a time")
    restore = _stop_on_signals(processes)
    try:
        if remaining:
            study.optimize(objective, n_trials=remaining, n_jobs=workers, catch=(TrialFailed,),
                           callbacks=[stop_when_spent], gc_after_trial=False)
    finally:
        restore()
    if processes.stopped.is_set():
        _queue_interrupted(study, objective.worker)
        raise SweepInterrupted(f"sweep {spec.study} interrupted: its running trials were stopped and are queued again; "
                               "run the same command to resume it")
    return finish(spec, url, params, root, study, parent, lock, register, echo)


def finish(spec: SweepSpec, url: str, params: Params, root: Path, study, parent: str | None, lock: ProjectLock,
           register: bool | None, echo: Callable[[str], None]) -> dict:
    """Rank the trials, write reports/sweep.json, and register the best once no trial is left to run."""
    paths = ProjectPaths(root)
    trials = study.get_trials(deepcopy=False)
    rows = rank([trial_row(t) for t in trials], params.register)
    left = [r["trial"] for r in rows if r["state"] in ("running", "waiting")]
    noise = (f"register.noise_z {params.register.noise_z:g} x std of the difference, and more than "
             f"register.min_improvement {params.register.min_improvement:g}")
    complete = [r for r in rows if r["state"] == "complete"]
    metric = complete[0]["metric"] if complete else spec.metric
    result = {
        "study": spec.study, "storage": redacted(url),
        "metric": metric, "direction": "minimize", "trials_budget": spec.trials, "trials_counted": counted(study),
        "noise_test": noise, "mlflow_parent_run_id": parent,
        "steps_trained": sum(r.get("steps_trained") or 0 for r in rows),
        "states": {state: sum(r["state"] == state for r in rows)
                   for state in ("complete", "pruned", "failed", "running", "waiting")},
        "trials": rows, "still_running": left, "registered": study.user_attrs.get(REGISTERED_ATTR),
    }
    table = table_markdown(rows, metric, noise)
    echo(table)
    should_register = spec.register_best if register is None else register
    if should_register and complete and not left:
        result["registered"] = _register_best(params, root, study, lock, complete[0], echo)
    elif left:
        echo(f"trials {left} are still running or queued (other processes of this study): the last to finish ranks "
             "and registers")
    write_json_atomic(paths.sweep_report, result)
    write_bytes_atomic(paths.sweep_table, table.encode())
    if parent is not None:
        markdown = paths.sweep_table
        best = complete[0] if complete else None
        sweep_runs.end_parent_run(params.mlflow, root, parent, [paths.sweep_report, markdown],
                                  {"best_value": best["value"], "trials_counted": result["trials_counted"],
                                   "steps_trained": result["steps_trained"]} if best else {},
                                  {"ganops.sweep.best_trial": best["trial"] if best else "none",
                                   "ganops.sweep.registered": json.dumps(result["registered"])}, finished=not left)
    return result


def _register_best(params: Params, root: Path, study, lock: ProjectLock, best: dict,
                   echo: Callable[[str], None]) -> dict | None:
    """`dvc exp apply` the best trial's experiment in the workspace and `dvc repro` it (export and
    register run on it): once per study, whichever process gets here first."""
    if not params.mlflow.enabled:
        echo("not registering the best trial: mlflow.enabled is false")
        return None
    with lock:
        done = study.user_attrs.get(REGISTERED_ATTR)
        if done and done.get("trial") == best["trial"]:
            echo(f"trial {best['trial']} was registered already: v{done['version']}")
            return done
        experiment = best["best_experiment"]
        applied = run_tool([tool("dvc"), "exp", "apply", experiment], root)
        # DVC exits non-zero when it can't check out the outputs of the stages the trial did not run
        # (export, register); what counts is that the experiment's params and lock are in the workspace
        if applied.returncode != 0 and not _holds_experiment(root, experiment):
            raise SweepError(f"the best trial's experiment {experiment} can't be applied here (it ran on "
                             f"{best.get('worker')}): {(applied.stderr or applied.stdout).strip()[-400:]}. Fetch it "
                             f"(`dvc exp pull <remote> {experiment}`) and run the same command again to register it")
        echo(f"registering trial {best['trial']} ({experiment}): dvc exp apply, then dvc repro (export, register)")
        checked(run_tool([tool("dvc"), "repro"], root), f"dvc repro of {experiment}")
        decision = RegistryDecision.load(ProjectPaths(root).register_report)
        done = {"trial": best["trial"], "experiment": experiment, "version": decision.version,
                "promoted": decision.promoted, "reason": decision.reason}
        study.set_user_attr(REGISTERED_ATTR, done)
    echo(f"registered {decision.model_name} v{decision.version}: "
         f"{'champion' if decision.promoted else 'not promoted'} ({decision.reason})")
    return done


def _holds_experiment(root: Path, experiment: str) -> bool:
    """Does the workspace hold the experiment's params.yaml and dvc.lock (is it applied)?"""
    head = run_tool(["git", "rev-parse", "HEAD"], root).stdout.strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{experiment}"
    for name in ("params.yaml", "dvc.lock"):
        saved = run_tool(["git", "show", f"{ref}:{name}"], root)
        if saved.returncode != 0 or not (root / name).exists() or (root / name).read_text() != saved.stdout:
            return False
    return True


def _queue_interrupted(study, worker: str) -> None:
    """The trials this process stopped run again, with the same params, when the sweep resumes."""
    retried = {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
    for trial in study.get_trials(deepcopy=False):
        if (trial.state.name == "FAIL" and trial.user_attrs.get("interrupted") and trial.number not in retried
                and trial.user_attrs.get("worker") == worker):
            requeue()(study, trial)


def _stop_on_signals(processes: TrialProcesses) -> Callable[[], None]:
    """SIGINT and SIGTERM stop the running trials' processes (their trials run again on resume)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame) -> None:
        log.warning("%s: stopping the running trials", signal.Signals(signum).name)
        processes.stop_all()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()] and None
