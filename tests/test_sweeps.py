"""Sweeps: the sweep file checked against the params model, the ranking's ties by the registry's noise
test, and `ganops sweep` run as a user runs it on a real git + DVC repository with an MLflow store and
an Optuna study in sqlite: pruning, DVC experiments, MLflow child runs, registration, resumption and
seed repeats (the sweeps that go wrong: tests/test_sweep_failures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import repo_from, run_cli, sh
from ganops.config import Params, RegisterParams, load_params
from ganops.sweeps.ranking import rank, table_markdown
from ganops.sweeps.spec import SweepError, SweepSpec
from ganops.sweeps.workspace import write_overrides

DVC = str(Path(sys.executable).parent / "dvc")
GANOPS = str(Path(sys.executable).parent / "ganops")
GOOD, BAD = 1e-2, 1e-6  # train.lr_g: after 10 tiny steps, FD 59.6 and 63.3 (the bad one barely moves)
HOPELESS = 1e-7  # moves the generator even less: worse at step 10 than the median of GOOD and BAD
# 40 tiny steps, scored every 10 on 40 images against the domain classifier's reference
SWEPT = {"train": {"steps": 40, "eval_every": 10, "eval_samples": 40, "checkpoint_every": 20},
         "eval": {"draws": 4, "spread_rounds": 5}}


def spec(root: Path, name: str, **fields) -> Path:
    body = {"study": "lr", "trials": 2, "workers": 1, "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
            "space": {"train.lr_g": {"choices": [GOOD, BAD, 3e-3, 3e-4, HOPELESS]}}} | fields
    path = root / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# --- the sweep file -----------------------------------------------------------------------------------


def checked(**fields) -> None:
    body = {"study": "s", "trials": 2, "space": {"train.lr_g": {"low": 1e-4, "high": 1e-3, "log": True}}} | fields
    SweepSpec.model_validate(body).check(Params())


@pytest.mark.parametrize("fields, message", [
    ({"space": {"train.lr": {"low": 1e-4, "high": 1e-3}}}, "'train.lr' is not a params.yaml key"),
    ({"space": {"train": {"choices": [1]}}}, "not a params.yaml key"),
    ({"space": {"model.latent": {"choices": [1]}}}, "no 'latent' there"),
    ({"space": {"register.noise_z": {"low": 1.0, "high": 2.0}}}, "does not change what a trial trains"),
    ({"space": {"train.loss": {"low": 0.0, "high": 1.0}}}, "a range needs a number key"),
    ({"space": {"train.steps": {"low": 10, "high": 20.5}}}, "must be whole numbers"),
    ({"space": {"train.loss": {"choices": ["minimax", "nope"]}}}, "train.loss"),
    ({"space": {"train.lr_g": {"low": 0.0, "high": 2.0}}}, "train.lr_g"),
    ({"sampler": {"name": "grid"}}, "grid needs choices for every key"),
    ({"fixed": {"train.eval_every": 0}}, "train.eval_every can be 0"),
    ({"fixed": {"train.lr_g": 1e-3}}, "only one of space, fixed and seeds"),
    ({"seeds": {"param": "train.seed", "values": [-1]}}, "train.seed"),
    ({"enqueue": [{"train.lr_g": 0.5}]}, "lies outside space.train.lr_g"),
])
def test_a_bad_sweep_file_is_refused_naming_what_is_wrong(fields, message):
    with pytest.raises(SweepError, match=message):
        checked(**fields)


def test_a_good_sweep_file_passes_and_malformed_ones_say_where(tmp_path):
    checked(fixed={"train.steps": 100}, seeds={"param": "train.seed", "values": [0, 1]}, enqueue=[{"train.lr_g": 5e-4}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: s\ntrials: 0\nspace: {train.lr_g: {choices: []}}\n")
    with pytest.raises(SweepError) as error:
        SweepSpec.load(bad)
    assert "trials" in str(error.value) and "space.train.lr_g" in str(error.value)


def test_written_overrides_keep_comments_and_read_back_as_numbers(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# knobs\ntrain:\n  lr_g: 0.0005  # the learning rate\n  steps: 4000\n")
    write_overrides(params, {"train.lr_g": 1e-05, "train.steps": 300})
    text = params.read_text()
    assert "# knobs" in text and "# the learning rate" in text
    assert yaml.safe_load(text)["train"] == {"lr_g": 1e-05, "steps": 300}  # 1e-05 would be a string to YAML 1.1


# --- ranking ------------------------------------------------------------------------------------------


def test_trials_within_noise_share_a_rank_by_the_registry_test():
    rows = [{"trial": n, "state": "complete", "value": v, "std": s, "params": {}} for n, v, s in
            [(0, 10.0, 1.0), (1, 12.0, 1.0), (2, 20.0, 1.0), (3, 13.5, 0.1)]]
    ranked = rank(rows + [{"trial": 4, "state": "pruned", "params": {}, "pruned_at_step": 10}], RegisterParams())
    # 12.0 and 10.0 differ by 2.0 < 1.96 * sqrt(2) = 2.77: tied; 13.5 is beaten by 10 (3.5 > 1.97) only
    assert [(r["trial"], r.get("rank")) for r in ranked] == [(0, 1), (1, 1), (3, 2), (2, 4), (4, None)]
    assert ranked[0]["tied_with"] == [1] and ranked[2]["tied_with"] == []
    exact = rank([dict(r) for r in rows], RegisterParams(noise_z=0.0))  # no noise: every difference counts
    assert [r["rank"] for r in exact] == [1, 2, 3, 4]
    strict = rank([dict(r) for r in rows], RegisterParams(min_improvement=5.0))  # the gate's other half
    assert [r["rank"] for r in strict] == [1, 1, 1, 4]  # 20 is beaten beyond 5 by the three others
    # a trial without an interval (eval.spread_rounds: 0): its noise is unknown, never 0, so nothing is
    # judged beyond noise against it, however far apart the values
    unknown = rank([dict(r, std=None if r["trial"] == 2 else r["std"], ci95=None, experiments=[]) for r in rows],
                   RegisterParams())
    assert {r["trial"]: r["rank"] for r in unknown} == {0: 1, 1: 1, 3: 2, 2: 1}
    assert "20.000 (-)" in table_markdown(unknown, "fid", "noise")


# --- ganops sweep on a real repository --------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_stages_repo) -> Path:
    """A git + DVC repository with SWEPT, its stages before train built (conftest's, shared)."""
    return repo_from(shared_stages_repo, tmp_path_factory.mktemp("sweep"), SWEPT)


def sweep(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("sweep", *args, cwd=root, timeout=900, check=check)


def experiments(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment of the current commit by name, with its params and metrics."""
    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=root).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                found[rev["name"]] = {"params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                                      "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
                                      "rev": rev["rev"]}
    return found


def study_trials(root: Path, study: str, storage: str | None = None):
    import optuna

    return optuna.load_study(study_name=study, storage=storage or f"sqlite:///{root / 'sweeps.db'}").get_trials()


def mlflow_runs(root: Path) -> list:
    from ganops.tracking.store import connect, experiment_id

    cfg = load_params(root / "params.yaml").mlflow
    client = connect(cfg, root)
    return client.search_runs([experiment_id(client, cfg, root)], max_results=1000)


@pytest.mark.system
def test_a_sweep_prunes_the_hopeless_trial_records_each_and_registers_the_second_when_it_is_the_better(project):
    # sequential here, so that the pruning is certain: two trials complete before the hopeless one reports;
    # the first barely moves the generator, the second does: the second is the best, and registered
    points = [{"train.lr_g": BAD}, {"train.lr_g": GOOD}, {"train.lr_g": HOPELESS}]
    result = sweep(project, str(spec(project, "lr.yaml", trials=3, enqueue=points)))
    first, good, hopeless = study_trials(project, "lr")
    states = [t.state.name for t in (first, good, hopeless)]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], result.stdout + result.stderr
    assert good.value < first.value, "the premise: 40 steps at lr_g 1e-2 score better than at 1e-6"
    assert hopeless.user_attrs["pruned_at_step"] == 10 and "median pruner" in hopeless.user_attrs["pruned_because"]
    assert hopeless.user_attrs["steps_trained"] == 10 and good.user_attrs["steps_trained"] == 40
    # every trial a DVC experiment: its params, and the numbers it made (no evaluation for the pruned one)
    shown = experiments(project)
    assert [shown[f"lr-t00{n}"]["params"]["train"]["lr_g"] for n in range(3)] == [BAD, GOOD, HOPELESS]
    assert shown["lr-t001"]["metrics"]["reports/eval.json"]["fd200_domain_train"] == pytest.approx(good.value)
    assert not shown["lr-t002"]["metrics"].get("reports/eval.json")  # listed by DVC, empty
    assert shown["lr-t002"]["metrics"]["reports/train.json"]["sweep_trial"]["pruned"]["step"] == 10
    # the MLflow parent run and one child run per trial, each with its state
    runs = mlflow_runs(project)
    (parent,) = [r for r in runs if r.data.tags.get("ganops.sweep") == "lr" and "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"lr-t000", "lr-t001", "lr-t002"}
    assert children["lr-t001"].data.tags["ganops.sweep.state"] == "complete"
    assert children["lr-t001"].data.metrics["eval/fd200_domain_train"] == pytest.approx(good.value)
    assert children["lr-t001"].data.params["train.lr_g"] == str(GOOD)
    assert children["lr-t002"].info.status == "KILLED" and children["lr-t002"].data.tags["ganops.sweep.state"] == "pruned"
    assert children["lr-t002"].data.metrics["train/fd40_domain_train"] > good.intermediate_values[10]
    # the ranked table, and the best trial registered from its experiment: the champion (the first version)
    table = json.loads((project / "reports" / "sweep.json").read_text())
    assert [(r["trial"], r["state"]) for r in table["trials"]] == [(1, "complete"), (0, "complete"), (2, "pruned")]
    assert table["trials"][0]["rank"] == 1 and table["trials"][2].get("rank") is None
    register = json.loads((project / "reports" / "register.json").read_text())
    assert register["version"] == "1" and register["promoted"] and register["run_id"] == children["lr-t001"].info.run_id
    assert register["metric_value"] == pytest.approx(good.value)
    assert table["registered"]["trial"] == 1 and table["registered"]["experiment"] == "lr-t001"
    assert "| 1 | 1 | complete |" in result.stdout
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr_g"] == GOOD  # the workspace holds it
    assert "up to date" in sh(DVC, "status", cwd=project).stdout  # `dvc repro` reproduced it: nothing left to run
    # and training it again outside the sweep gives the trial's generator (CPU training is deterministic)
    trained = shown["lr-t001"]["metrics"]["reports/train.json"]["generator_sha256"]
    sh(DVC, "repro", "--force", "--single-item", "train", cwd=project,
       env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert json.loads((project / "reports" / "train.json").read_text())["generator_sha256"] == trained


@pytest.mark.system
def test_resuming_runs_only_the_new_budget_two_trials_at_a_time(project):
    before = {name: e["rev"] for name, e in experiments(project).items()}
    spec5 = spec(project, "lr5.yaml", trials=5, enqueue=[{"train.lr_g": 3e-3}, {"train.lr_g": 3e-4}])
    result = sweep(project, str(spec5), "--workers", "2", "--no-register")
    assert "3 of 5 trials done, 0 running elsewhere; running 2 more, 2 at a time" in result.stdout
    trials = study_trials(project, "lr")
    assert len(trials) == 5 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    after = experiments(project)
    assert {name: after[name]["rev"] for name in before} == before  # finished trials were not run again
    runs = {r.info.run_name: r for r in mlflow_runs(project) if r.info.run_name in ("lr-t003", "lr-t004")}
    first, second = sorted(runs.values(), key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two new trials did not run at once"
    # the same command again: nothing left to run, nothing re-run
    again = sweep(project, str(spec5), "--no-register")
    assert "5 of 5 trials done, 0 running elsewhere; running 0 more" in again.stdout
    assert len(study_trials(project, "lr")) == 5


@pytest.mark.system
def test_another_search_under_the_same_study_name_is_refused(project):
    other = spec(project, "other.yaml", space={"train.lr_d": {"choices": [GOOD, BAD]}})
    result = sweep(project, str(other), check=False)
    assert result.returncode == 2 and "was started from another sweep file" in result.stderr


@pytest.mark.system
def test_repeated_seeds_make_one_trial_of_several_experiments(project):
    spec_file = spec(project, "seeds.yaml", study="seeds", trials=1, pruner={"name": "none"}, register=False,
                     seeds={"param": "train.seed", "values": [0, 1]}, space={"train.lr_g": {"choices": [GOOD]}})
    sweep(project, str(spec_file))
    (trial,) = study_trials(project, "seeds")
    shown = experiments(project)
    values = [shown[f"seeds-t000-s{seed}"]["metrics"]["reports/eval.json"]["fd200_domain_train"] for seed in (0, 1)]
    assert [shown[f"seeds-t000-s{seed}"]["params"]["train"]["seed"] for seed in (0, 1)] == [0, 1]
    assert values[0] != values[1] and trial.value == pytest.approx(sum(values) / 2)  # the mean over the seeds
    assert trial.user_attrs["std"] == pytest.approx(abs(values[0] - values[1]) / 2)  # their standard error
    low, high = trial.user_attrs["ci95"]
    assert low < trial.value < high and "t interval" in trial.user_attrs["interval"]
    runs = [r for r in mlflow_runs(project) if r.data.tags.get("ganops.sweep") == "seeds"]
    (trial_run,) = [r for r in runs if r.info.run_name == "seeds-t000"]
    seeded = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == trial_run.info.run_id}
    assert seeded == {"seeds-t000-s0", "seeds-t000-s1"}

