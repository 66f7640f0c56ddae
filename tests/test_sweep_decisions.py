"""The sweep's decisions, each at its boundary and where it is made, without DVC, MLflow or training:
the trial registered (two trials complete, the second better; a resumed sweep whose best changed; not
while a trial still runs), a trial over seeds (their mean, standard error and t interval, its best
seed) and two seeded trials tied exactly at the noise bar, the default pruner (successive halving, as
the sweep file's default builds it) pruning at a rung and at the 1/reduction_factor boundary, and
the sweep's workers against the cores it may use.

What crosses a process boundary is stood in for: a trial's pipeline (``workspace.run_trial``: `dvc
repro` in a worktree) returns the evaluation it would have written, `dvc exp apply` and `dvc repro`
are recorded (the latter writes reports/register.json as the register stage would), and the MLflow
runs are recorded. Everything that decides is ganops' own code: ``run_sweep``, ``Objective``,
``finish``, ``rank``, ``seed_mean``, ``make_pruner``, ``TrialReporter`` and ``plan_slots``.

tests/test_sweeps.py makes the registering decision on a real repository: `ganops sweep` with DVC,
MLflow and three trials that train, the second the best."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path

import optuna
import pytest
import yaml

import ganops.sweeps.study as sweep_study
from conftest import tiny, write_params
from ganops.config import RegisterParams
from ganops.metrics.report import EvaluationReport
from ganops.sweeps.ranking import rank, trial_row
from ganops.sweeps.spec import SweepError, SweepSpec
from ganops.sweeps.study import REGISTERED_ATTR, Objective, finish, open_study, plan_slots, run_sweep
from ganops.sweeps.workspace import Outcome, ProjectLock, Slot
from ganops.tools import tool
from ganops.tracking import sweep_runs
from ganops.trial import TRIAL_ENV, PrunerSpec, TrialContext, TrialReporter, open_storage

# a study with a heartbeat (as the sweep opens it) warns when trials are asked for outside study.optimize
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
METRIC = "fd200_domain_train"
WORSE, BETTER = 3e-4, 3e-3  # train.lr_g of the first trial and of the second, better one
DVC = tool("dvc")
T3 = 3.182446305  # Student's t(0.975) with 3 degrees of freedom (four seeds), the t table's 3.182


def evaluation(value: float, std: float = 1.0) -> EvaluationReport:
    """reports/eval.json as a trial's evaluate stage writes it, reduced to the primary metric."""
    return EvaluationReport(backbone="domain", num_samples=200, draws=4, reference="train", num_reference=200,
                            generator_sha256="0" * 64, primary_metric=METRIC, interval_method="half-sample",
                            **{METRIC: value, f"{METRIC}_std": std, f"{METRIC}_ci95_low": value - 2 * std,
                               f"{METRIC}_ci95_high": value + 2 * std})


class Pipelines:
    """Stands in for ``workspace.run_trial``: each (train.lr_g, train.seed) scores ``scores[...]`` with
    the evaluation's own std ``eval_std``; records what the sweep handed each run."""

    def __init__(self, scores: dict, eval_std: float = 1.0) -> None:
        self.scores, self.eval_std, self.runs = scores, eval_std, []

    def __call__(self, pipeline, lock, processes, study, number, name, overrides, env, slot) -> Outcome:
        self.runs.append({"trial": number, "experiment": name, "overrides": overrides, "slot": slot,
                          "context": TrialContext.model_validate_json(env[TRIAL_ENV])})
        value = self.scores[overrides["train.lr_g"], overrides.get("train.seed")]
        return Outcome("complete", name, report=evaluation(value, self.eval_std))


class Tools:
    """Stands in for the sweep's `dvc exp apply` / `dvc repro` (and `git config`): records them; `dvc
    repro` writes reports/register.json as the register stage would."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls, self.cwds = root, [], []

    def __call__(self, args, cwd, env=None, timeout=None) -> subprocess.CompletedProcess:
        self.calls.append(list(args))
        self.cwds.append(cwd)
        if list(args) == [DVC, "repro"]:
            (self.root / "reports").mkdir(exist_ok=True)
            (self.root / "reports" / "register.json").write_text(json.dumps({
                "model_name": "ganops-generator", "version": "1", "promoted": True,
                "reason": "first registered version: no champion yet", "previous_champion": None, "champion": "1",
                "metric": METRIC, "metric_value": 20.0, "run_id": "r", "model_uri": "models:/ganops-generator/1"}))
        return subprocess.CompletedProcess(args, 0, "", "")

    @property
    def dvc(self) -> list[list[str]]:
        return [call for call in self.calls if call[0] == DVC]


class Runs:
    """Stands in for ganops.tracking.sweep_runs: the parent run's and the trials' runs, recorded."""

    def __init__(self, monkeypatch) -> None:
        self.parent_end: list[dict] = []
        monkeypatch.setattr(sweep_runs, "open_parent_run", lambda *a: "parent")
        monkeypatch.setattr(sweep_runs, "open_trial_run", lambda cfg, root, study, parent, name, *a: f"run-{name}")
        monkeypatch.setattr(sweep_runs, "end_trial_run", lambda *a, **k: None)
        monkeypatch.setattr(sweep_runs, "end_parent_run", lambda cfg, root, run_id, files, metrics, tags, finished:
                            self.parent_end.append({"cfg": cfg, "root": root, "run_id": run_id, "files": files,
                                                    "metrics": metrics, "tags": tags, "finished": finished}))


def sweep_file(root: Path, **fields) -> Path:
    body = {"study": "reg", "trials": 2, "pruner": {"name": "none"},
            "space": {"train.lr_g": {"choices": [WORSE, BETTER]}},
            "enqueue": [{"train.lr_g": WORSE}, {"train.lr_g": BETTER}]} | fields
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """A project folder whose sweep runs no process: the stand-ins above in place of run_trial, the
    shared stages' build, the worktree clean-up, the tools and MLflow."""
    write_params(tmp_path / "params.yaml", {"mlflow": {"enabled": True}})
    built = []
    monkeypatch.setattr(sweep_study.Pipeline, "prepare", classmethod(lambda cls, root, env: built.append(root)))
    monkeypatch.setattr(sweep_study, "remove_stale_worktrees", lambda *a: [])
    tools = Tools(tmp_path)
    monkeypatch.setattr(sweep_study, "run_tool", tools)
    return tmp_path, tools, Runs(monkeypatch), built


# --- registering the best -----------------------------------------------------------------------------


def test_the_sweep_registers_the_second_trial_when_it_is_the_better(stubbed, monkeypatch):
    root, tools, runs, _ = stubbed
    pipelines = Pipelines({(WORSE, None): 30.0, (BETTER, None): 20.0})  # 10 apart, std 1 each: beyond noise
    monkeypatch.setattr(sweep_study, "run_trial", pipelines)
    said = []
    result = run_sweep(sweep_file(root), root, echo=said.append)
    assert [(r["trial"], r["experiment"]) for r in pipelines.runs] == [(0, "reg-t000"), (1, "reg-t001")]
    # the best is the second trial: its experiment is applied and reproduced (export, register run on it)
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t001"], [DVC, "repro"]]
    assert result["registered"] == {"trial": 1, "experiment": "reg-t001", "version": "1", "promoted": True,
                                    "reason": "first registered version: no champion yet"}
    assert [(r["trial"], r["value"], r["rank"], r["tied_with"]) for r in result["trials"]] == [(1, 20.0, 1, []),
                                                                                           (0, 30.0, 2, [])]
    assert json.loads((root / "reports" / "sweep.json").read_text()) == result
    table = next(line for line in said if line.startswith("| rank"))
    assert table.splitlines()[2].startswith("| 1 | 1 | complete | 20.000 (1) |")
    # the parent run names the same best
    (ended,) = runs.parent_end
    assert ended["tags"]["ganops.sweep.best_trial"] == 1 and ended["metrics"]["best_value"] == 20.0
    assert json.loads(ended["tags"]["ganops.sweep.registered"])["trial"] == 1 and ended["finished"]


def completed(number_value_std: list[tuple[int, float, float]]) -> optuna.Study:
    """An in-memory study of completed trials as the sweep's objective leaves them."""
    study = optuna.create_study(direction="minimize")
    choices = optuna.distributions.CategoricalDistribution([WORSE, BETTER])
    for number, value, std in number_value_std:
        lr = (WORSE, BETTER)[number % 2]
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr_g": lr}, distributions={"train.lr_g": choices}, value=value,
            user_attrs={"metric": METRIC, "std": std, "ci95": [value - 2 * std, value + 2 * std], "seeds": [],
                        "interval": "the evaluation's own", "experiments": [f"reg-t{number:03d}"],
                        "best_experiment": f"reg-t{number:03d}", "worker": "here:1", "steps_trained": 100}))
    return study


def test_a_resumed_sweep_registers_its_new_best_once(stubbed):
    root, tools, runs, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    study = completed([(0, 30.0, 1.0), (1, 20.0, 1.0)])
    # a first run of the sweep registered trial 0, then the second trial completed and is better
    study.set_user_attr(REGISTERED_ATTR, {"trial": 0, "experiment": "reg-t000", "version": "1", "promoted": True,
                                          "reason": "first"})
    said = []
    result = finish(spec, "sqlite://", params, root, study, None, ProjectLock(root), None, said.append)
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t001"], [DVC, "repro"]]
    assert result["registered"]["trial"] == 1 and study.user_attrs[REGISTERED_ATTR]["trial"] == 1
    # finishing again (another process of the study, or the same command again) registers nothing more
    again = finish(spec, "sqlite://", params, root, study, None, ProjectLock(root), None, said.append)
    assert len(tools.dvc) == 2 and again["registered"]["trial"] == 1
    assert "trial 1 was registered already: v1" in said


def test_nothing_is_registered_while_a_trial_of_the_study_still_runs(stubbed):
    root, tools, runs, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    study = completed([(0, 30.0, 1.0), (1, 20.0, 1.0)])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    said = []
    result = finish(spec, "sqlite://", params, root, study, "parent", ProjectLock(root), None, said.append)
    assert tools.dvc == [] and result["registered"] is None and result["still_running"] == [2]
    assert runs.parent_end[0]["finished"] is False  # the last process to finish ends the parent run
    study.tell(2, 25.0)  # it completes (not the best): now the sweep registers the best
    result = finish(spec, "sqlite://", params, root, study, "parent", ProjectLock(root), None, said.append)
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t001"], [DVC, "repro"]] and result["registered"]["trial"] == 1


def unfinished(study: optuna.Study, state: str, steps_trained: int | None, **attrs) -> None:
    """A trial of the study that did not complete (pruned at step 50, failed, waiting)."""
    states = {"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL,
              "waiting": optuna.trial.TrialState.WAITING}
    study.add_trial(optuna.trial.create_trial(
        state=states[state], intermediate_values={50: 40.0} if state == "pruned" else {},
        user_attrs={"steps_trained": steps_trained, "experiments": []} | attrs))


def test_finishing_a_sweep_writes_its_whole_report_registers_its_best_and_ends_the_parent_run(stubbed):
    root, tools, runs, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    study = completed([(0, 30.0, 1.0), (1, 20.0, 1.0)])
    unfinished(study, "pruned", 50, pruned_at_step=50)
    unfinished(study, "failed", None)  # a trial that failed before training counts no step
    said = []
    result = finish(spec, "sqlite://", params, root, study, "parent", ProjectLock(root), None, said.append)
    rows = rank([trial_row(t) for t in study.get_trials()], params.register)
    registered = {"trial": 1, "experiment": "reg-t001", "version": "1", "promoted": True,
                  "reason": "first registered version: no champion yet"}
    noise = "register.noise_z 1.96 x std of the difference, and more than register.min_improvement 0"
    assert result == {
        "study": "reg", "storage": "sqlite://", "metric": METRIC, "direction": "minimize", "trials_budget": 2,
        "trials_counted": 4, "noise_test": noise, "mlflow_parent_run_id": "parent", "steps_trained": 250,
        "states": {"complete": 2, "pruned": 1, "failed": 1, "running": 0, "waiting": 0},
        "trials": rows, "still_running": [], "registered": registered}
    assert [r["trial"] for r in result["trials"]] == [1, 0, 2, 3]
    assert json.loads((root / "reports" / "sweep.json").read_text()) == result
    table = (root / "reports" / "sweep.md").read_text()
    assert said == [table, "registering trial 1 (reg-t001): dvc exp apply, then dvc repro (export, register)",
                    "registered ganops-generator v1: champion (first registered version: no champion yet)"]
    assert "| rank | trial | state | fd200_domain_train (std) |" in table and "(register.noise_z 1.96 x std" in table
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t001"], [DVC, "repro"]]
    assert [cwd for call, cwd in zip(tools.calls, tools.cwds) if call[0] == DVC] == [root, root]  # in the workspace
    assert study.user_attrs[REGISTERED_ATTR] == registered
    assert runs.parent_end == [{
        "cfg": params.mlflow, "root": root, "run_id": "parent",
        "files": [root / "reports" / "sweep.json", root / "reports" / "sweep.md"],
        "metrics": {"best_value": 20.0, "trials_counted": 4, "steps_trained": 250},
        "tags": {"ganops.sweep.best_trial": 1, "ganops.sweep.registered": json.dumps(registered)}, "finished": True}]


def test_a_sweep_with_no_completed_trial_or_one_still_queued_registers_nothing(stubbed):
    root, tools, runs, _ = stubbed
    spec = SweepSpec.load(sweep_file(root, metric="fd200_domain_test"))
    params = sweep_study.load_params(root / "params.yaml")
    study = optuna.create_study(direction="minimize")
    unfinished(study, "pruned", 50, pruned_at_step=50)
    said = []
    result = finish(spec, "sqlite://", params, root, study, "parent", ProjectLock(root), None, said.append)
    assert result["metric"] == "fd200_domain_test" and result["registered"] is None and said == [said[0]]
    assert runs.parent_end[0]["metrics"] == {} and runs.parent_end[0]["finished"] is True
    assert runs.parent_end[0]["tags"] == {"ganops.sweep.best_trial": "none", "ganops.sweep.registered": "null"}
    # a completed trial, and one queued (waiting) in the study: the last process to finish registers
    queued = completed([(0, 30.0, 1.0)])
    unfinished(queued, "waiting", None)
    earlier = {"trial": 0, "experiment": "reg-t000", "version": "1", "promoted": True, "reason": "first"}
    queued.set_user_attr(REGISTERED_ATTR, earlier)  # an earlier run of the sweep registered trial 0
    said = []
    result = finish(spec, "sqlite://", params, root, queued, None, ProjectLock(root), None, said.append)
    assert result["still_running"] == [1] and result["registered"] == earlier and tools.dvc == []
    assert said[1:] == ["trials [1] are still running or queued (other processes of this study): the last to "
                        "finish ranks and registers"]
    assert len(runs.parent_end) == 1  # no parent run: nothing more ended


def test_the_register_argument_overrides_the_sweep_file_and_mlflow_off_registers_nothing(stubbed):
    root, tools, runs, _ = stubbed
    params = sweep_study.load_params(root / "params.yaml")
    kept = SweepSpec.load(sweep_file(root, register=False))
    said = []
    assert finish(kept, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), None,
                  said.append)["registered"] is None and tools.dvc == []
    result = finish(kept, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), True,
                    said.append)
    assert result["registered"]["trial"] == 0 and tools.dvc == [[DVC, "exp", "apply", "reg-t000"], [DVC, "repro"]]
    on = SweepSpec.load(sweep_file(root))
    assert finish(on, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), False,
                  said.append)["registered"] is None and len(tools.dvc) == 2
    off = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"enabled": False})})
    said = []
    assert finish(on, "sqlite://", off, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), None,
                  said.append)["registered"] is None and len(tools.dvc) == 2
    assert said[1:] == ["not registering the best trial: mlflow.enabled is false"]


class ApplyFails(Tools):
    """`dvc exp apply` exits 1 (as when it can't check out the outputs of export and register); the
    workspace then holds the experiment's params.yaml and dvc.lock (``holds``) or not; the register
    stage keeps the champion (``promoted`` False)."""

    def __init__(self, root: Path, stderr: str, stdout: str = "", holds: bool = False, promoted: bool = True) -> None:
        super().__init__(root)
        self.stderr, self.stdout, self.holds, self.promoted = stderr, stdout, holds, promoted

    def __call__(self, args, cwd, env=None, timeout=None) -> subprocess.CompletedProcess:
        args = list(args)
        if args[:3] == [DVC, "exp", "apply"]:
            self.calls.append(args)
            return subprocess.CompletedProcess(args, 1, self.stdout, self.stderr)
        if args[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(args, 0, "abcdef0\n", "")
        if args[:2] == ["git", "show"]:
            self.calls.append(args)
            name = args[2].rpartition(":")[2]
            saved = (self.root / name).read_text() if self.holds else ""
            return subprocess.CompletedProcess(args, 0 if self.holds else 128, saved, "")
        done = super().__call__(args, cwd, env, timeout)
        if args == [DVC, "repro"] and not self.promoted:
            report = self.root / "reports" / "register.json"
            report.write_text(json.dumps(json.loads(report.read_text()) | {
                "promoted": False, "champion": "0", "reason": "not better than the champion beyond noise"}))
        return done


def test_a_best_trial_whose_experiment_cannot_be_applied_here_is_not_registered(stubbed, monkeypatch):
    root, _, _, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    stderr = "x" * 50 + "E" * 400
    tools = ApplyFails(root, stderr)
    monkeypatch.setattr(sweep_study, "run_tool", tools)
    with pytest.raises(SweepError) as raised:
        finish(spec, "sqlite://", params, root, completed([(0, 30.0, 1.0), (1, 20.0, 1.0)]), None, ProjectLock(root),
               None, [].append)
    message = str(raised.value)
    assert message.startswith("the best trial's experiment reg-t001 can't be applied here (it ran on here:1): " + "E" * 400
                              + ". Fetch it (`dvc exp pull <remote> reg-t001`)")  # the last 400 characters
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t001"]]  # no repro
    assert tools.calls[1] == ["git", "show", "refs/exps/ab/cdef0/reg-t001:params.yaml"]
    only_stdout = ApplyFails(root, "", stdout="  no such experiment  ")
    monkeypatch.setattr(sweep_study, "run_tool", only_stdout)
    with pytest.raises(SweepError, match=r"\(it ran on here:1\): no such experiment\. Fetch it"):
        finish(spec, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), None, [].append)


def test_a_failed_apply_that_left_the_experiment_in_the_workspace_registers_it_even_unpromoted(stubbed, monkeypatch):
    root, _, _, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    tools = ApplyFails(root, "ERROR: failed to checkout export outputs", holds=True, promoted=False)
    monkeypatch.setattr(sweep_study, "run_tool", tools)
    said = []
    result = finish(spec, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), None,
                    said.append)
    assert tools.dvc == [[DVC, "exp", "apply", "reg-t000"], [DVC, "repro"]]
    assert result["registered"] == {"trial": 0, "experiment": "reg-t000", "version": "1", "promoted": False,
                                    "reason": "not better than the champion beyond noise"}
    assert said[-1] == "registered ganops-generator v1: not promoted (not better than the champion beyond noise)"



def test_a_failed_dvc_repro_of_the_best_trial_is_reported_with_its_experiment(stubbed, monkeypatch):
    root, _, _, _ = stubbed
    spec, params = SweepSpec.load(sweep_file(root)), sweep_study.load_params(root / "params.yaml")
    calls = []

    def tools(args, cwd, env=None, timeout=None) -> subprocess.CompletedProcess:
        calls.append((list(args), cwd))
        return subprocess.CompletedProcess(args, 1 if list(args) == [DVC, "repro"] else 0, "", "register: boom")

    monkeypatch.setattr(sweep_study, "run_tool", tools)
    with pytest.raises(SweepError, match=r"^dvc repro of reg-t000 failed: register: boom$"):
        finish(spec, "sqlite://", params, root, completed([(0, 30.0, 1.0)]), None, ProjectLock(root), None, [].append)
    assert calls == [([DVC, "exp", "apply", "reg-t000"], root), ([DVC, "repro"], root)]


# --- the ranking within noise -------------------------------------------------------------------------


def row(trial: int, state: str = "complete", value: float | None = None, std: float | None = None, **more) -> dict:
    """A row of the sweep's table as ``trial_row`` makes it (only what ``rank`` reads)."""
    return {"trial": trial, "state": state, "params": {}, "experiments": []} | (
        {"value": value, "std": std} if state == "complete" else {}) | more


def ranked(rows: list[dict], noise_z: float = 2.0, min_improvement: float = 0.0) -> list[tuple]:
    out = rank(rows, RegisterParams(noise_z=noise_z, min_improvement=min_improvement))
    return [(r["trial"], r.get("rank"), r.get("tied_with")) for r in out]


def test_a_trial_ranks_below_only_those_beyond_noise_of_it_exactly_at_the_bar_is_a_tie():
    # noise_z 2 x hypot(3, 4) = 10: 20 (std 3) and 30 (std 4) tie; 30.5 is beyond; equal values: the lower trial first
    assert ranked([row(0, value=30.0, std=4.0), row(1, value=20.0, std=3.0)]) == [(1, 1, [0]), (0, 1, [1])]
    assert ranked([row(0, value=30.5, std=4.0), row(1, value=20.0, std=3.0)]) == [(1, 1, []), (0, 2, [])]
    assert ranked([row(3, value=20.0, std=0.0), row(2, value=20.0, std=0.0)]) == [(2, 1, [3]), (3, 1, [2])]
    # 0 and 1 tie, both beat 2 (10 apart, std 1): rank 3 is one plus the two that beat it
    three = [row(2, value=40.0, std=1.0), row(0, value=30.0, std=1.0), row(1, value=31.0, std=1.0)]
    assert ranked(three, noise_z=2.0) == [(0, 1, [1]), (1, 1, [0]), (2, 3, [])]


def test_a_trial_without_a_std_ties_with_every_trial_and_min_improvement_is_a_margin():
    no_std = [row(0, value=10.0, std=None), row(1, value=50.0, std=0.0), row(2, value=90.0, std=0.0)]
    assert ranked(no_std) == [(0, 1, [1]), (1, 1, [0]), (2, 2, [])]  # 1 beats 2 (std 0); 0 beats nobody
    margin = [row(0, value=10.0, std=0.0), row(1, value=10.5, std=0.0), row(2, value=10.6, std=0.0)]
    assert ranked(margin, min_improvement=0.5) == [(0, 1, [1]), (1, 1, [0]), (2, 2, [])]  # 0.5 is not more than 0.5


def test_unfinished_trials_follow_the_ranked_ones_the_latest_pruned_first():
    rows = [row(0, "waiting"), row(1, "running"), row(2, "failed"), row(3, "pruned", pruned_at_step=None),
            row(4, "pruned", pruned_at_step=1), row(5, "pruned", pruned_at_step=30), row(6, value=5.0, std=1.0),
            row(7, "pruned", pruned_at_step=30)]
    assert [r["trial"] for r in rank(rows, RegisterParams())] == [6, 5, 7, 4, 3, 2, 1, 0]
    assert "rank" not in rank(rows, RegisterParams())[1]


# --- a trial over seeds --------------------------------------------------------------------------------

# four seeds whose standard error is exact: deviations from the mean (-9, 3, 3, 3) give the sample std
# sqrt((81 + 3 x 9) / 3) = 6 and the standard error 6 / sqrt(4) = 3; (-12, 4, 4, 4): 8 and 4
BETTER_SEEDS = [23.0, 23.0, 11.0, 23.0]  # mean 20, standard error 3, best seed the third (seed 2)
WORSE_SEEDS = [34.0, 18.0, 34.0, 34.0]  # mean 30, standard error 4, best seed the second (seed 1)


def seeded_study(tmp_path, worse: list[float], better: list[float]):
    """Two trials (the worse first), each trained with seeds 0..3, run by the sweep's Objective; the
    evaluation of every seed has its own std 0.5, which a mean over seeds must not use."""
    spec = SweepSpec.model_validate({"study": "s", "trials": 2, "pruner": {"name": "none"},
                                     "space": {"train.lr_g": {"choices": [WORSE, BETTER]}},
                                     "seeds": {"param": "train.seed", "values": [0, 1, 2, 3]}})
    scores = {(WORSE, seed): v for seed, v in enumerate(worse)} | {(BETTER, seed): v for seed, v in enumerate(better)}
    pipelines = Pipelines(scores, eval_std=0.5)
    slots = queue.Queue()
    slots.put(Slot((0,)))
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"train.lr_g": WORSE})
    study.enqueue_trial({"train.lr_g": BETTER})
    objective = Objective(spec, tiny(), tmp_path, "sqlite://", None, None, None, slots, None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_study, "run_trial", pipelines)
        study.optimize(objective, n_trials=2)
    return study, pipelines


def test_a_trial_over_seeds_is_their_mean_with_its_t_interval_and_keeps_its_best_seed(tmp_path):
    study, pipelines = seeded_study(tmp_path, WORSE_SEEDS, BETTER_SEEDS)
    worse, better = study.trials
    assert better.state.name == "COMPLETE" and better.value == 20.0  # the mean, not the best seed (11)
    attrs = better.user_attrs
    assert attrs["std"] == 3.0  # the seeds' standard error, not an evaluation's own std (0.5)
    assert attrs["ci95"] == pytest.approx([20.0 - 3 * T3, 20.0 + 3 * T3], rel=1e-9)  # [10.4527, 29.5473]
    assert attrs["interval"] == "t interval of the mean over 4 training seeds"
    assert [s["value"] for s in attrs["seeds"]] == BETTER_SEEDS
    assert attrs["best_experiment"] == "s-t001-s2" and worse.user_attrs["best_experiment"] == "s-t000-s1"
    assert attrs["experiments"] == [f"s-t001-s{seed}" for seed in range(4)]
    assert (worse.value, worse.user_attrs["std"]) == (30.0, 4.0)
    assert worse.user_attrs["ci95"] == pytest.approx([30.0 - 4 * T3, 30.0 + 4 * T3], rel=1e-9)
    # every seed trains with its seed; only the first reports to the pruner (it reads one curve per trial)
    ran = [(r["trial"], r["overrides"]["train.seed"], r["context"].report) for r in pipelines.runs]
    assert ran == [(t, seed, seed == 0) for t in (0, 1) for seed in range(4)]
    # the row the ranking and the registration read: the best seed's experiment is the one applied
    row = trial_row(better)
    assert (row["value"], row["std"], row["best_experiment"]) == (20.0, 3.0, "s-t001-s2")


def test_two_seeded_trials_tie_exactly_at_the_noise_bar_and_split_just_beyond_it(tmp_path):
    # at noise_z 2 the bar is 2 x hypot(3, 4) = 10: means 20 and 30 are exactly at it, a tie
    cfg = RegisterParams(noise_z=2.0, min_improvement=0.0)
    study, _ = seeded_study(tmp_path, WORSE_SEEDS, BETTER_SEEDS)
    ranked = rank([trial_row(t) for t in study.trials], cfg)
    assert [(r["trial"], r["value"], r["std"], r["rank"], r["tied_with"]) for r in ranked] == [
        (1, 20.0, 3.0, 1, [0]), (0, 30.0, 4.0, 1, [1])]
    # the worse trial's seeds half a unit higher (same spread): 10.5 apart, beyond the bar
    study, _ = seeded_study(tmp_path, [v + 0.5 for v in WORSE_SEEDS], BETTER_SEEDS)
    ranked = rank([trial_row(t) for t in study.trials], cfg)
    assert [(r["trial"], r["value"], r["std"], r["rank"], r["tied_with"]) for r in ranked] == [
        (1, 20.0, 3.0, 1, []), (0, 30.5, 4.0, 2, [])]


# --- the default pruner: successive halving ------------------------------------------------------------


@pytest.fixture
def default_study(tmp_path):
    """The study as `ganops sweep` builds it from a sweep file that names no pruner (sqlite storage),
    and a reporter per trial as each trial's train stage builds it."""
    spec = SweepSpec.model_validate({"study": "sh", "trials": 20, "fixed": {"train.eval_every": 10},
                                     "space": {"train.lr_g": {"low": 1e-4, "high": 1e-2}}})
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study, _ = open_study(spec, tmp_path / "sweep.yaml", url, tiny(), tmp_path)

    def reporter(report: bool = True) -> TrialReporter:
        trial = study.ask()
        return TrialReporter(TrialContext(storage=url, study=spec.study, trial_number=trial.number,
                                          pruner=spec.pruner, report=report))

    # the first trial completes, trained to step 400: "auto" makes the first rung 400 // 100 = 4 steps,
    # the next ones 16, 64, 256 (x reduction_factor 4); before any trial completes nothing is pruned
    first = reporter()
    assert [first(step, value, 1.0) for step, value in ((100, 50.0), (200, 40.0), (300, 30.0), (400, 20.0))] == [""] * 4
    study.tell(first.context.trial_number, 20.0)
    return study, reporter, spec


def test_the_default_pruner_stops_a_trial_worse_at_a_rung(default_study):
    study, reporter, spec = default_study
    assert spec.pruner == PrunerSpec(name="successive-halving", min_resource="auto", reduction_factor=4)
    # at step 10 a trial has passed the first rung (4 steps) and not the second (16)
    assert reporter()(10, 30.0, 1.0) == ""  # alone at the rung: it goes on
    hopeless = reporter()
    reason = hopeless(10, 40.0, 1.0)  # worse than the one other trial at the rung: not in its best 1/4
    assert reason.startswith("step 10: pruned by the sweep's successive-halving pruner (study sh, trial 2): the "
                             "in-training value 40, not in the best 1/4 of the 2 trials that reached this step")
    assert hopeless.pruned["step"] == 10 and hopeless.pruned["pruner"] == "successive-halving"
    assert study.trials[2].user_attrs["pruned_at_step"] == 10
    assert reporter()(10, 25.0, 1.0) == ""  # the best at the rung goes on
    # a trial's later seeds report nothing: a hopeless value is neither reported nor pruned
    later_seed = reporter(report=False)
    assert later_seed(10, 99.0, 1.0) == "" and later_seed.pruned is None
    assert study.trials[4].intermediate_values == {}


def test_the_default_pruner_keeps_the_best_quarter_of_the_trials_at_a_rung(default_study):
    study, reporter, _ = default_study
    for value in (30.0, 29.0, 28.0, 27.0, 26.0, 25.0):  # six trials, each the best so far at the rung
        assert reporter()(10, value, 1.0) == ""
    # the seventh, second of 7 at the rung: the best 1/4 of 7 is the best one alone (7 // 4 = 1)
    assert reporter()(10, 25.5, 1.0).startswith("step 10: pruned by the sweep's successive-halving pruner")
    # the eighth, second of 8 (the pruned one counts: it reached the rung): 8 // 4 = 2 go on
    assert reporter()(10, 25.2, 1.0) == ""
    assert [t.state.name for t in study.trials] == ["COMPLETE"] + ["RUNNING"] * 8


# --- a queued trial runs once ----------------------------------------------------------------------------


@pytest.mark.parametrize("storages", ["one shared, as the threads of --workers", "one each, as joining processes"])
def test_each_queued_trial_is_taken_by_exactly_one_worker(tmp_path, storages):
    """Workers that ask at the same moment never take the same queued trial (a resumed sweep's
    interrupted trial, the sweep file's `enqueue` points): on SQLite, Optuna's check-then-set of a
    waiting trial is atomic only because ganops' storage begins each transaction with the write lock."""
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = optuna.create_study(study_name="q", storage=open_storage(url))
    for x in range(8):
        study.enqueue_trial({"x": float(x)})
    shared = open_storage(url) if storages.startswith("one shared") else None
    start, taken = threading.Barrier(4), []

    def worker() -> None:
        mine = optuna.load_study(study_name="q", storage=shared or open_storage(url))
        start.wait()
        taken.extend(mine.ask().number for _ in range(2))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(8))  # each queued trial once, and no new trial while some waited


# --- workers and cores -----------------------------------------------------------------------------------

CORES = (0, 1, 4, 5, 7)  # the cores this process may run on: five, not numbered 0..4


@pytest.fixture
def five_cores(monkeypatch):
    """This process (pid 0: the caller) may use 5 of the machine's 64 cores (a container's or taskset's
    affinity); any other process, all 64."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(CORES) if pid == 0 else set(range(64)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)


def test_workers_up_to_the_usable_cores_split_them_and_one_more_is_refused(five_cores):
    params = tiny()
    assert [s.cpus for s in plan_slots(5, params)] == [(0,), (1,), (4,), (5,), (7,)]
    assert [s.env() for s in plan_slots(5, params)] == [
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}] * 5
    two = plan_slots(2, params)  # two cores each, evenly: the fifth is left idle
    assert [s.cpus for s in two] == [(0, 1), (4, 5)] and {s.env()["OMP_NUM_THREADS"] for s in two} == {"2"}
    (one,) = plan_slots(1, params)
    assert one.cpus == CORES and one.env()["OMP_NUM_THREADS"] == "5" and one.gpu is None
    with pytest.raises(SweepError, match=r"^--workers 6 on 5 CPU cores would oversubscribe them: at most 5 "
                                         r"\(each trial gets its own cores\)$"):
        plan_slots(6, params)


def test_without_an_affinity_the_machine_s_cores_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert [s.cpus for s in plan_slots(3, tiny())] == [(0,), (1,), (2,)]
    with pytest.raises(SweepError, match="--workers 4 on 3 CPU cores"):
        plan_slots(4, tiny())


def test_without_a_core_count_one_core_is_assumed(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # os.cpu_count's answer when it cannot tell
    assert [s.cpus for s in plan_slots(1, tiny())] == [(0,)]
    with pytest.raises(SweepError, match="--workers 2 on 1 CPU cores"):
        plan_slots(2, tiny())


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_gpus_are_handed_out_only_where_training_runs_on_them(five_cores, monkeypatch, device):
    """train.device cpu on a GPU machine, or auto where CUDA is not available (a driver missing) though
    devices are listed: no GPU slots, and the cores limit the workers."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    slots = plan_slots(5, tiny({"train": {"device": device}}))
    assert [(s.cpus, s.gpu) for s in slots] == [((c,), None) for c in CORES]
    assert all("CUDA_VISIBLE_DEVICES" not in s.env() for s in slots)


def test_more_gpus_than_cores_share_the_cores(monkeypatch):
    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    slots = plan_slots(2, tiny({"train": {"device": "cuda"}}))
    assert [(s.cpus, s.gpu) for s in slots] == [((3,), 0), ((3,), 1)]  # the second worker's share is empty: all


def test_on_a_gpu_machine_each_worker_gets_one_gpu_and_its_share_of_the_cores(five_cores, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    params = tiny({"train": {"device": "cuda"}})
    slots = plan_slots(2, params)
    assert [(s.cpus, s.gpu) for s in slots] == [((0, 1), 0), ((4, 5), 1)]
    assert [(s.env()["CUDA_VISIBLE_DEVICES"], s.env()["OMP_NUM_THREADS"]) for s in slots] == [("0", "2"), ("1", "2")]
    with pytest.raises(SweepError, match="--workers 3 but 2 GPU"):
        plan_slots(3, params)


def test_a_sweep_with_more_workers_than_cores_is_refused_before_it_builds_anything(stubbed, five_cores):
    root, tools, _, built = stubbed
    with pytest.raises(SweepError, match="--workers 6 on 5 CPU cores"):
        run_sweep(sweep_file(root), root, workers=6)
    assert built == [] and tools.dvc == [] and not (root / "sweeps.db").exists()
