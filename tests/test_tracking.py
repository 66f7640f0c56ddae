"""MLflow tracking and the registry against a real sqlite store and a real `mlflow server`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import conftest
from conftest import TINY, free_port, merge, run_cli, spawn, stop, wait_for_http, write_params
from ganops.io import file_sha256
from ganops.metrics.report import EvaluationReport
from ganops.noise import bonferroni_z
from ganops.serving import OnnxGenerator
from ganops.serving.locate import open_generator
from ganops.stages.evaluate import evaluate
from ganops.stages.export import export
from ganops.stages.prepare import prepare
from ganops.stages.register import register
from ganops.stages.train import train
from ganops.stages.train_evaluator import train_evaluator
from ganops.tracking.registry import list_versions, rollback
from ganops.tracking.store import TrackingError

TRACKED = {"mlflow": {"enabled": True, "max_retries": 0, "timeout_s": 5}}


def tiny(overrides: dict | None = None):
    return conftest.tiny(overrides, base=merge(TINY, TRACKED))


def git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)


def run_pipeline(root: Path, overrides: dict | None = None) -> dict:
    params = tiny(overrides)
    prepare(params, root)
    train_evaluator(params, root)
    train(params, root)
    evaluate(params, root)
    export(params, root)
    return register(params, root)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git repository that ran the whole pipeline once, tracked in its own sqlite store."""
    root = tmp_path_factory.mktemp("tracked")
    write_params(root / "params.yaml", TRACKED)
    git(root, "init", "-q")
    git(root, "add", "params.yaml")
    git(root, "commit", "-qm", "params")
    run_pipeline(root, {"train": {"eval_every": 10}})  # watched: an in-training evaluation at steps 10 and 20
    return root


def client_for(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.system
def test_one_run_holds_params_curves_metrics_artifacts_and_lineage(project):
    client = client_for(project)
    run_id = json.loads((project / "reports" / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["train.steps"] == "20" and run.data.params["data.source"] == "digits"
    history = client.get_metric_history(run_id, "train/loss_d")
    assert [m.step for m in history] == [5, 10, 15, 20]
    # the augmentation probability and ADA's heuristic are curves too (no augmentation here: p is 0)
    augment_p = client.get_metric_history(run_id, "train/augment_p")
    assert [(m.step, m.value) for m in augment_p] == [(s, 0.0) for s in (5, 10, 15, 20)]
    assert len(client.get_metric_history(run_id, "train/real_sign")) == 4
    assert "train/images_per_s" in run.data.metrics
    # the in-training evaluations are curves by step, and their fixed-noise samples the image slider's steps
    assert [m.step for m in client.get_metric_history(run_id, "train/fd200_domain_train")] == [10, 20]
    assert [m.step for m in client.get_metric_history(run_id, "train/fd200_domain_train_std")] == [10, 20]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images if p.endswith(".png")
                  and "compressed" not in p) == [10, 20], images
    report = json.loads((project / "reports" / "train.json").read_text())
    assert run.data.tags["train.chosen_because"] == report["chosen_because"] and run.info.run_name.startswith("train-")
    assert "eval/fd200_domain_train" in run.data.metrics and "eval/fd200_domain_train_ci95_high" in run.data.metrics
    assert "export/parity_max_abs_error" in run.data.metrics
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    tags = run.data.tags
    assert tags["data.train_checksum"] == manifest["files"]["train"]["sha256"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    from ganops.tracking.runs import tree_sha256

    assert tags["lineage.dep.data/prepared"] == tree_sha256(project / "data" / "prepared")  # this run's actual data
    assert "dvc.lock.sha256" not in tags
    artifacts = {a.path for a in client.list_artifacts(run_id, "train")} | {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"train/samples.png", "train/train_log.csv", "eval/eval_samples.png"} <= artifacts
    assert (project / "mlartifacts").is_dir()  # the embedded store keeps artifacts in the project
    # exactly one run: evaluate, export and register logged into the run that train opened
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.system
def test_register_writes_a_model_card_and_attaches_it_to_the_version(project, tmp_path):
    import yaml
    from PIL import Image

    folder = project / "reports" / "model_card"
    card = (folder / "MODEL_CARD.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    report = _read_eval(project)
    assert meta["model_name"] == "ganops-generator" and meta["version"] == "1" and meta["datasets"] == ["digits"]
    (primary, *_others) = meta["model-index"][0]["results"][0]["metrics"]
    assert primary["name"] == report["primary_metric"] and primary["value"] == report[report["primary_metric"]]
    assert primary["ci95"] == [report[f"{primary['name']}_ci95_low"], report[f"{primary['name']}_ci95_high"]]
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["files"]["train"]["sha256"] in body and report["generator_sha256"] in body
    per_class_rows = [line for line in body.splitlines() if line.startswith("| ") and line.count("|") == 7
                      and line.split("|")[1].strip() in manifest["class_names"]]
    assert len(per_class_rows) == 10
    assert "| train.lr_g |" in body and "## Intended use and limitations" in body
    figures = sorted(p.name for p in folder.glob("*.png"))
    assert figures == ["memorisation.png", "samples.png", "training_curve.png", "truncation.png"]
    for name in figures:
        assert f"]({name})" in body and Image.open(folder / name).size[0] > 100
    # attached to the version: its description, and its run's artifacts, which `ganops models card` writes out
    version = client_for(project).get_model_version("ganops-generator", "1")
    assert report["primary_metric"] in version.description and "ganops models card 1" in version.description
    run_cli("models", "card", "1", "--out", str(tmp_path / "card"), cwd=project)
    assert sorted(p.name for p in (tmp_path / "card").iterdir()) == sorted([*figures, "MODEL_CARD.md"])
    assert all((tmp_path / "card" / name).read_bytes() == (folder / name).read_bytes() for name in [*figures, "MODEL_CARD.md"])
    missing = run_cli("models", "card", "99", "--out", str(tmp_path / "none"), cwd=project, check=False)
    assert missing.returncode == 2 and "has no version 99" in missing.stderr and not (tmp_path / "none").exists()
    # a second version from the same run (another evaluation): each version keeps its own card
    root = Path(shutil.copytree(project, tmp_path / "p"))
    _edit_eval(root, memorisation_suspected=None)  # as an evaluation against the test split: no memorisation picture
    assert register(tiny(), root)["version"] == "2"
    for number in ("1", "2"):
        run_cli("models", "card", number, "--out", str(tmp_path / f"v{number}"), cwd=root)
        assert f"version: '{number}'" in (tmp_path / f"v{number}" / "MODEL_CARD.md").read_text()
    assert (tmp_path / "v1" / "memorisation.png").exists() and not (tmp_path / "v2" / "memorisation.png").exists()


@pytest.mark.system
def test_lineage_changes_with_a_param_and_only_with_what_changed(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p", ignore=shutil.ignore_patterns("checkpoints")))
    client = client_for(root)
    first = client.get_run(json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"]).data.tags
    train(tiny({"train": {"lr_g": 3e-4}}), root)
    second = client.get_run(json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"]).data.tags
    assert second["lineage.params.sha256"] != first["lineage.params.sha256"]
    assert '"lr_g": 0.0003' in second["lineage.params"]
    assert second["lineage.sha256"] != first["lineage.sha256"]
    assert second["lineage.dep.data/prepared"] == first["lineage.dep.data/prepared"]  # the data did not change
    assert second["lineage.dep.src/ganops/training"] == first["lineage.dep.src/ganops/training"]


@pytest.mark.system
def test_lineage_is_what_training_started_on(project, tmp_path, monkeypatch):
    """A commit made while training runs is not what it trained on: the tags are taken at the start."""
    import ganops.stages.train as train_stage

    root = Path(shutil.copytree(project, tmp_path / "p", ignore=shutil.ignore_patterns("checkpoints")))
    started_on = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    checked = train_stage.preflight

    def commit_while_training(cfg, at):  # the loop calls this once training has begun
        checked(cfg, at)
        (root / "later.txt").write_text("committed during training")
        git(root, "add", "later.txt")
        git(root, "commit", "-qm", "during training")

    monkeypatch.setattr(train_stage, "preflight", commit_while_training)
    train(tiny({"train": {"lr_g": 4e-4}}), root)
    tags = client_for(root).get_run(json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"]).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert head != started_on and tags["git.commit"] == started_on


@pytest.mark.system
def test_first_version_is_champion_and_a_tie_is_not_promoted(project, tmp_path):
    report = json.loads((project / "reports" / "register.json").read_text())
    assert report["version"] == "1" and report["promoted"] is True and report["champion"] == "1"
    root = Path(shutil.copytree(project, tmp_path / "p"))
    retried = register(tiny(), root)  # the same registration again (a Prefect retry): its own version, reused
    assert retried["version"] == "1" and retried["promoted"] is True and retried["champion"] == "1"
    assert retried["previous_champion"] is None and retried["reason"] == report["reason"]
    assert len(client_for(root).search_model_versions("name = 'ganops-generator'")) == 1
    _new_pipeline_run(root)
    again = register(tiny(), root)  # the same generator from another pipeline run: no improvement at all
    assert again["version"] == "2" and again["promoted"] is False and again["champion"] == "1"
    assert "improvement 0.0000 <= required" in again["reason"]
    version = client_for(root).get_model_version("ganops-generator", again["version"])
    assert version.tags["promoted"] == "false" and "required" in version.tags["promotion_reason"]


def _new_pipeline_run(root: Path) -> None:
    """reports/mlflow_run.json pointing at a new run in the project's store, as a new `dvc repro` makes."""
    client = client_for(root)
    experiment = client.get_experiment_by_name("ganops").experiment_id
    run_id = client.create_run(experiment).info.run_id
    (root / "reports" / "mlflow_run.json").write_text(json.dumps({"enabled": True, "run_id": run_id}))


def _read_eval(root: Path) -> dict:
    """The whole evaluation, eval.json and its siblings, as one flat record (as register reads it)."""
    return EvaluationReport.load(root / "reports" / "eval.json").model_dump(exclude_unset=True)


def _write_eval(root: Path, record: dict) -> None:
    """The evaluation written back as evaluate writes it: eval.json and its siblings."""
    EvaluationReport.model_validate(record).write(root / "reports" / "eval.json")


def _edit_eval(root: Path, **changes) -> None:
    _write_eval(root, {**_read_eval(root), **changes})


def _make_excellent(root: Path) -> None:
    metric = _read_eval(root)["primary_metric"]
    _edit_eval(root, **{metric: 0.001, f"{metric}_std": 0.0})


@pytest.mark.system
def test_promotion_needs_more_than_noise_and_comparable_evaluations(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    champion = _read_eval(root)
    metric = champion["primary_metric"]
    fd, std = champion[metric], champion[f"{metric}_std"]
    _edit_eval(root, **{metric: fd - 0.5 * std})  # better, but inside the noise
    assert register(tiny(), root)["promoted"] is False
    _edit_eval(root, **{metric: fd - 10 * std - 1})  # clearly better
    better = register(tiny(), root)
    assert better["promoted"] is True and better["previous_champion"] == "1"
    _edit_eval(root, **{metric: 0.0, "fid_protocol": "clean"})  # "perfect", but under another protocol
    other = register(tiny(), root)
    assert other["promoted"] is False and "not comparable" in other["reason"]
    _edit_eval(root, **{metric: fd - 20 * std - 2, "fid_protocol": champion.get("fid_protocol")})  # comparable, better
    strict = register(tiny({"register": {"min_improvement": 1e9}}), root)  # beyond the noise, not the margin
    assert strict["promoted"] is False and "required 1000000000.0000 (max of min_improvement 1e+09" in strict["reason"]


@pytest.mark.system
def test_a_version_better_overall_but_worse_beyond_noise_on_one_class_is_not_promoted(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    champion = _read_eval(root)
    metric, names = champion["primary_metric"], champion["class_names"]
    fd, std = champion[metric], champion[f"{metric}_std"]
    per_class = {index: (champion[f"{metric}_class{index}"], champion[f"{metric}_class{index}_std"])
                 for index in range(len(names))}
    better = {metric: fd - 10 * std - 1}  # clearly better overall ...
    value, class_std = per_class[3]
    _edit_eval(root, **better, **{f"{metric}_class3": value + 10 * class_std + 1})  # ... but class 3 far worse
    refused = register(tiny(), root)
    assert refused["promoted"] is False and refused["champion"] == "1"
    assert f"class {names[3]!r} is worse beyond noise" in refused["reason"] and "Bonferroni over 10 classes" in refused["reason"]
    # within the noise on that class (the per-class z is above noise_z: 10 tests at once): promoted
    z = bonferroni_z(1.96, len(names))
    assert 2.7 < z < 2.9
    _edit_eval(root, **{f"{metric}_class3": value + 0.9 * z * class_std * 2 ** 0.5})
    within = register(tiny(), root)
    assert within["promoted"] is True and "per-class gate: no class of 10 worse beyond noise" in within["reason"]
    # the new champion far worse on class 5, with the gate off: promoted on the overall number alone
    _edit_eval(root, **{metric: fd - 30 * std - 3, f"{metric}_class5": per_class[5][0] + 50 * per_class[5][1] + 5})
    assert register(tiny(), root)["promoted"] is False
    assert register(tiny({"register": {"per_class_gate": False}}), root)["promoted"] is True


INTERVAL_SUFFIXES = ("_std", "_ci95_low", "_ci95_high")


def _without_intervals(root: Path, metric: str, overall: bool = False, per_class: bool = False, **changes) -> None:
    """eval.json as an evaluation without half-samples leaves it: no std, no interval (per class, overall)."""
    report = _read_eval(root)
    kept = {name: value for name, value in report.items() if not name.endswith(INTERVAL_SUFFIXES) or not (
        (per_class and name.startswith(f"{metric}_class")) or (overall and name in {metric + s for s in INTERVAL_SUFFIXES}))}
    _write_eval(root, {**kept, **changes})


@pytest.mark.system
def test_a_per_class_gate_that_cannot_be_computed_never_promotes(project, tmp_path):
    """Clearly better overall, but a per-class interval missing on either side (eval.spread_rounds: 0
    there): not promoted, saying what is missing and how to get it; only turning the gate off promotes,
    and the version records it."""
    root = Path(shutil.copytree(project, tmp_path / "p"))
    original = _read_eval(root)
    metric, fd, std = _primary(root)
    _new_pipeline_run(root)
    _without_intervals(root, metric, per_class=True, **{metric: fd - 10 * std - 1})  # this version's side
    ours = register(tiny(), root)
    assert ours["promoted"] is False and ours["champion"] == "1", ours["reason"]
    assert "per-class gate cannot be computed: no per-class interval in this version's evaluation" in ours["reason"]
    assert "set eval.spread_rounds > 0 and re-run evaluate" in ours["reason"]
    client = client_for(root)
    per_class = json.loads(client.get_model_version("ganops-generator", "1").tags["per_class"])
    client.set_model_version_tag("ganops-generator", "1", "per_class",  # the champion's side, one class
                                 json.dumps({**per_class, next(iter(per_class)): [per_class[next(iter(per_class))][0], None]}))
    _write_eval(root, original)
    _new_pipeline_run(root)
    _edit_eval(root, **{metric: fd - 10 * std - 1})
    theirs = register(tiny(), root)
    assert theirs["promoted"] is False and f"no per-class interval in champion v1's evaluation for class " \
        f"{next(iter(per_class))!r}" in theirs["reason"]
    _new_pipeline_run(root)
    off = register(tiny({"register": {"per_class_gate": False}}), root)  # the only way past it: recorded
    assert off["promoted"] is True and "per-class gate off (register.per_class_gate: false)" in off["reason"]
    tags = {v: client.get_model_version("ganops-generator", v).tags for v in (ours["version"], off["version"])}
    assert tags[ours["version"]]["per_class_gate"] == "on" and tags[off["version"]]["per_class_gate"] == "off"


@pytest.mark.system
def test_a_class_scored_on_neither_side_never_promotes(project, tmp_path):
    """A class with too few images to be scored, in the candidate and in the champion (whose tag, from
    before every class was named, leaves it out): the gate cannot see that class, so it refuses."""
    root = Path(shutil.copytree(project, tmp_path / "p"))
    metric, fd, std = _primary(root)
    report = _read_eval(root)
    rare = report["class_names"][2]
    client = client_for(root)
    per_class = json.loads(client.get_model_version("ganops-generator", "1").tags["per_class"])
    client.set_model_version_tag("ganops-generator", "1", "per_class",
                                 json.dumps({name: row for name, row in per_class.items() if name != rare}))
    kept = {name: value for name, value in report.items() if not name.startswith(f"{metric}_class2")}
    _write_eval(root, {**kept, metric: fd - 10 * std - 1})
    _new_pipeline_run(root)
    refused = register(tiny(), root)
    assert refused["promoted"] is False and refused["champion"] == "1", refused["reason"]
    assert f"class {rare!r} not scored in this version's evaluation" in refused["reason"]
    assert f"class {rare!r} not scored in champion v1's evaluation" in refused["reason"]


def _primary(root: Path) -> tuple[str, float, float]:
    report = _read_eval(root)
    metric = report["primary_metric"]
    return metric, report[metric], report[f"{metric}_std"]


@pytest.mark.system
def test_a_missing_std_is_never_taken_as_zero(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    metric, fd, std = _primary(root)
    original = _read_eval(root)
    _without_intervals(root, metric, overall=True, **{metric: fd - 10 * std - 1})  # better by 10 of the champion's stds
    for gate in (True, False):
        _new_pipeline_run(root)
        missing = register(tiny({"register": {"per_class_gate": gate}}), root)
        assert missing["promoted"] is False and missing["champion"] == "1", missing["reason"]
        assert f"this version's evaluation has no {metric}_std" in missing["reason"]
        assert "never taken as 0" in missing["reason"] and "eval.spread_rounds" in missing["reason"]
    client_for(root).delete_model_version_tag("ganops-generator", "1", "metric_std")  # the champion's std missing
    _write_eval(root, original)
    _edit_eval(root, **{metric: fd - 10 * std - 1})
    _new_pipeline_run(root)
    theirs = register(tiny(), root)
    assert theirs["promoted"] is False and "champion v1 has no metric_std" in theirs["reason"]


@pytest.mark.system
def test_versions_scored_with_and_without_intervals_are_not_comparable(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    metric, fd, std = _primary(root)
    original = _read_eval(root)
    _without_intervals(root, metric, overall=True, per_class=True,  # as eval.spread_rounds: 0 writes it
                       interval_method="none (eval.spread_rounds: 0)", **{metric: fd - 10 * std - 1})
    _new_pipeline_run(root)
    without = register(tiny({"register": {"per_class_gate": False}}), root)
    assert without["promoted"] is False and "not comparable with champion v1" in without["reason"]
    draws = original["draws"]
    _write_eval(root, original)
    _edit_eval(root, **{metric: fd - 10 * std - 1, "draws": draws * 2})  # the half-samples' draws differ
    _new_pipeline_run(root)
    other = register(tiny(), root)
    assert other["promoted"] is False and "not comparable with champion v1" in other["reason"]


@pytest.mark.system
def test_register_refuses_an_evaluation_of_another_generator(project, tmp_path):
    """`ganops train` and `export` by hand after an evaluation: the model is not the generator eval.json scored."""
    from ganops import GanopsError

    root = Path(shutil.copytree(project, tmp_path / "p"))
    scored = _read_eval(root)["generator_sha256"]
    train(tiny({"train": {"seed": 7}}), root)
    export(tiny(), root)
    retrained = file_sha256(root / "models" / "generator.safetensors")
    assert retrained != scored
    with pytest.raises(GanopsError, match=f"scored generator {scored[:16]}.*exported from generator {retrained[:16]}"):
        register(tiny(), root)
    assert len(client_for(root).search_model_versions("name = 'ganops-generator'")) == 1  # nothing registered


@pytest.mark.system
def test_register_refuses_an_evaluation_scored_by_another_classifier(project, tmp_path):
    """The domain classifier retrained after `evaluate` (eval.evaluator.seed: 1): its numbers came from the
    old one, so register refuses, naming both digests, and registers nothing (issue 37, item 2)."""
    from ganops import GanopsError

    root = Path(shutil.copytree(project, tmp_path / "p"))
    scored = _read_eval(root)["evaluator_sha256"]
    train_evaluator(tiny({"eval": {"evaluator": {"seed": 1}}}), root)
    now = file_sha256(root / "models" / "evaluator.safetensors")
    assert now != scored
    with pytest.raises(GanopsError, match=f"domain classifier {scored[:16]}.*is now {now[:16]}"):
        register(tiny(), root)
    assert len(client_for(root).search_model_versions("name = 'ganops-generator'")) == 1  # nothing registered


@pytest.mark.system
def test_register_refuses_non_finite_metrics_and_replaces_a_non_finite_champion(project, tmp_path):
    from ganops import GanopsError

    root = Path(shutil.copytree(project, tmp_path / "p"))
    path = root / "reports" / "eval.json"
    report = json.loads(path.read_text())
    metric = report["primary_metric"]
    for bad in ({metric: float("nan")}, {f"{metric}_std": float("inf")}, {f"{metric}_ci95_low": float("nan")}):
        path.write_text(json.dumps({**report, **bad}))  # Python's json writes the bare NaN token
        with pytest.raises(GanopsError, match="not a finite number; a generator is never registered on it"):
            register(tiny(), root)
    assert len(client_for(root).search_model_versions("name = 'ganops-generator'")) == 1
    client_for(root).set_model_version_tag("ganops-generator", "1", "metric_value", "nan")  # a legacy NaN champion
    path.write_text(json.dumps(report))
    _new_pipeline_run(root)
    decision = register(tiny(), root)
    assert decision["promoted"] is True and "is nan, not a finite number" in decision["reason"]


@pytest.mark.system
def test_models_cli_list_promote_rollback(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    _make_excellent(root)
    assert register(tiny(), root)["promoted"] is True  # v2 champion
    listing = run_cli("models", "list", cwd=root).stdout
    lines = [line for line in listing.splitlines()[1:] if line.strip()]
    assert len(lines) == 2 and sum("champion" in line for line in lines) == 1
    assert "fd200_domain_train" in listing and "champion" in lines[1]
    assert "champion: v1 (rolled back from v2)" in run_cli("models", "rollback", cwd=root).stdout
    assert "champion" in [line for line in run_cli("models", "list", cwd=root).stdout.splitlines() if line.startswith("1 ")][0]
    assert "champion: v2 (was v1)" in run_cli("models", "promote", "2", cwd=root).stdout
    bad = run_cli("models", "promote", "99", cwd=root, check=False)
    assert bad.returncode == 2 and "has no version 99" in bad.stderr
    assert rollback(tiny().mlflow, tiny().register, root)["champion"] == "1"
    with pytest.raises(Exception, match="no earlier champion"):
        rollback(tiny().mlflow, tiny().register, root)


# Run in each racing `ganops register`: at the decision point (the champion read, the alias not yet
# moved) a process waits until the other one is there too, for at most 8 s. With the lock, the other
# can't get there, so the wait runs out and the decisions follow each other; without it, both decide
# against the same old champion, which the test sees in their reasons.
AT_THE_DECISION = """
import sys, time, pathlib, ganops.tracking.registry as r
from ganops.cli import app
folder, original = pathlib.Path(sys.argv[1]), r._decide
def deciding(cfg, new, champion):
    (folder / str(pathlib.Path.cwd()).replace('/', '_')).touch()
    deadline = time.monotonic() + 8
    while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return original(cfg, new, champion)
r._decide = deciding
sys.argv = ['ganops', 'register']
app()
"""


def _race_register(roots: list[Path], envs: list[dict], rendezvous: Path) -> list[dict]:
    rendezvous.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", AT_THE_DECISION, str(rendezvous)], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for root, env in zip(roots, envs)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    return [json.loads((root / "reports" / "register.json").read_text()) for root in roots]


def _assert_one_after_the_other(decisions: list[dict], champion_before: str) -> None:
    """Both beat the old champion, one beats the other: whichever decided second must have decided
    against the first one's result, never against the old champion as well."""
    assert len({d["version"] for d in decisions}) == 2
    against_old = [d for d in decisions if f"champion v{champion_before} " in d["reason"]]
    assert len(against_old) == 1, [d["reason"] for d in decisions]


def _good_and_better(roots: list[Path]) -> None:
    metric = _read_eval(roots[0])["primary_metric"]
    _edit_eval(roots[0], **{metric: 0.5, f"{metric}_std": 0.0})
    _edit_eval(roots[1], **{metric: 0.001, f"{metric}_std": 0.0})


@pytest.mark.system
def test_two_racing_register_processes_decide_one_after_the_other(project, tmp_path):
    """Two real `ganops register` processes on one sqlite store, their decisions forced to meet."""
    store = tmp_path / "shared.db"
    roots = [Path(shutil.copytree(project, tmp_path / name, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts")))
             for name in ("a", "b")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "TQDM_DISABLE": "1"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("ganops", artifact_location=(tmp_path / "artifacts").as_uri())
    for root in roots:  # each copy's pipeline run, opened in the shared store
        run_id = client.create_run(experiment).info.run_id
        (root / "reports" / "mlflow_run.json").write_text(json.dumps({"enabled": True, "run_id": run_id}))
    first = subprocess.run([sys.executable, "-m", "ganops.cli", "register"], cwd=roots[0], env=env,
                           capture_output=True, text=True)  # v1: the champion both will race to beat
    assert first.returncode == 0, first.stderr
    _new_run_in(client, experiment, roots)
    _good_and_better(roots)
    decisions = _race_register(roots, [env, env], tmp_path / "rendezvous")
    _assert_one_after_the_other(decisions, "1")
    champion = client.get_model_version_by_alias("ganops-generator", "champion")
    assert float(champion.tags["metric_value"]) == pytest.approx(0.001)  # the better one, whatever the order
    assert list(client.get_registered_model("ganops-generator").aliases) == ["champion"]


def _new_run_in(client, experiment: str, roots: list[Path]) -> None:
    for root in roots:
        run_id = client.create_run(experiment).info.run_id
        (root / "reports" / "mlflow_run.json").write_text(json.dumps({"enabled": True, "run_id": run_id}))


# --- the registry lock's fence: a register that lost its lock moves nothing -----------------------------


def _champion_and_history(client, name: str) -> tuple[dict, list[str]]:
    from ganops.tracking.registry import HISTORY_TAG

    model = client.get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}, json.loads(model.tags.get(HISTORY_TAG, "[]"))


@pytest.mark.system
def test_a_register_whose_lock_file_was_taken_over_moves_nothing(project, tmp_path, monkeypatch):
    """A local store: while register is paused at its decision, its lock file is removed and another
    process takes the lock on a fresh one; the first must not move the alias."""
    import ganops.tracking.registry as registry

    root = Path(shutil.copytree(project, tmp_path / "p"))
    client, before = client_for(root), _champion_and_history(client_for(root), "ganops-generator")
    _make_excellent(root)  # clearly better: it would be promoted
    takers, decide = [], registry._decide

    def paused_while_another_takes_the_lock(cfg, new, champion):
        lock_file = root / "mlflow.db.register.lock"
        lock_file.unlink()
        takers.append(registry.FileRegistryLock(lock_file).__enter__())  # another register, on a fresh lock file
        return decide(cfg, new, champion)

    monkeypatch.setattr(registry, "_decide", paused_while_another_takes_the_lock)
    with pytest.raises(registry.LockLost, match="was replaced and taken over by .*: nothing moved"):
        register(tiny(), root)
    assert _champion_and_history(client, "ganops-generator") == before == ({"champion": "1"}, ["1"])
    left_out = client.get_model_version("ganops-generator", "2").tags
    assert left_out["promoted"] == "false" and "not decided: the registry lock file" in left_out["promotion_reason"]
    takers[0].check_held()  # the new holder holds it still: the first one's exit left it alone
    takers[0].__exit__(None, None, None)


@pytest.mark.system
def test_a_register_whose_lease_ran_out_and_was_taken_over_moves_nothing(project, mlflow_server, tmp_path, monkeypatch):
    """A tracking server: register paused past its lease (the taker's clock is the lease later), another
    register takes the lock over; the first must not move the alias, nor release the taker's lock."""
    from mlflow import MlflowClient

    import ganops.tracking.registry as registry

    root = Path(shutil.copytree(project, tmp_path / "p", ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts")))
    on_server = {"mlflow": {"tracking_uri": mlflow_server}, "register": {"model_name": "fenced"}}
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.create_experiment("fenced")
    _new_run_in(client, experiment, [root])
    assert register(tiny(on_server), root)["promoted"] is True  # v1, the champion
    _new_run_in(client, experiment, [root])
    _make_excellent(root)
    takers, decide = [], registry._decide

    def paused_past_the_lease(cfg, new, champion):
        later = lambda: time.time() + registry.LOCK_TIMEOUT_S + 1  # noqa: E731  the lease has run out by then
        takers.append(registry.RegistryLock(client, "fenced", clock=later).__enter__())
        return decide(cfg, new, champion)

    monkeypatch.setattr(registry, "_decide", paused_past_the_lease)
    with pytest.raises(registry.LockLost, match="registry lock fenced.lock was taken over by .*: nothing moved"):
        register(tiny(on_server), root)
    assert _champion_and_history(client, "fenced") == ({"champion": "1"}, ["1"])
    assert client.get_model_version("fenced", "2").tags["promoted"] == "false"
    takers[0].check_held()  # still the taker's: the first register's exit did not delete it
    takers[0].__exit__(None, None, None)
    assert [m.name for m in client.search_registered_models("name = 'fenced.lock'")] == []


@pytest.mark.stage
def test_the_alias_moves_only_with_enough_of_the_lease_left(tmp_path):
    """The lease's clock driven by hand: held, then paused until less than the fence's margin is left
    (no one else came): the holder refuses to move the alias rather than race a take-over."""
    from mlflow import MlflowClient

    from ganops.tracking.registry import FENCE_MARGIN_S, LockLost, RegistryLock, _set_champion

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    now = [1000.0]
    with RegistryLock(client, "m", hold_s=600, clock=lambda: now[0]) as lock:
        lock.check_held()
        now[0] += 600 - FENCE_MARGIN_S - 1  # one second more than the margin left
        lock.check_held()
        now[0] += 2  # one second less
        with pytest.raises(LockLost, match="too little to move the alias"):
            _set_champion(client, "m", "1", ["1"], lock)
        assert client.get_registered_model("m").aliases == {} and "ganops.champion_history" not in \
            client.get_registered_model("m").tags


@pytest.mark.system
def test_serving_resolves_the_champion_and_follows_it(project, tmp_path, monkeypatch):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    cfg = tiny().mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = os.getcwd()
    os.chdir(root)  # the default store is the project's mlflow.db
    try:
        generator = open_generator("models:/ganops-generator@champion", cfg)
        direct = OnnxGenerator(root / "models" / "generator.onnx")
        assert (generator.sample(4, 1)[0] == direct.sample(4, 1)[0]).all()
    finally:
        os.chdir(cwd)
    evaluated = _read_eval(root)
    metric = evaluated["primary_metric"]
    shipped = json.loads(direct.metadata["ganops.metrics"])  # export ran after evaluate: the file carries it
    assert shipped["primary_metric"] == metric and shipped["value"] == evaluated[metric]
    _make_excellent(root)

    write_params(root / "params.yaml", merge(TRACKED, {"serve": {"reload_interval_s": 0.2}}))
    port = free_port()
    server = spawn([str(Path(sys.executable).parent / "ganops"), "serve", "--model",
                    "models:/ganops-generator@champion", "--port", str(port)], tmp_path / "serve.log", cwd=root,
                   env={k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANOPS_API_KEY")})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/readyz", server, seconds=60)
        first = httpx.get(url + "/v1/model").json()
        assert first["version"] == "1" and first["registry"] == {"name": "ganops-generator", "version": "1",
                                                                  "uri": "models:/ganops-generator@champion"}
        assert first["metrics"]["primary_metric"] == metric and first["metrics"]["value"] == evaluated[metric]
        assert first["metrics"]["ci95"] == [evaluated[f"{metric}_ci95_low"], evaluated[f"{metric}_ci95_high"]]
        assert first["metrics"]["protocol"]["num_samples"] == 200 and first["metrics"]["protocol"]["reference"] == "train"
        assert register(tiny(), root)["promoted"] is True  # v2 becomes champion
        deadline = time.monotonic() + 20
        while httpx.get(url + "/v1/model").json()["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.2)
        info = httpx.get(url + "/v1/model").json()
        assert info["version"] == "2" and info["name"] == "ganops-generator"
        assert info["metrics"]["value"] == 0.001 and info["registry"]["version"] == "2"  # v2's own evaluation
        assert httpx.post(url + "/v1/generate", json={"n": 2}).status_code == 200
    finally:
        stop(server)


@pytest.mark.system
def test_unreachable_server_fails_fast_and_keeps_outputs(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    dead = f"http://127.0.0.1:{free_port()}"
    before = {p: p.read_bytes() for p in (root / "models").glob("generator.*")}
    params = tiny({"mlflow": {"tracking_uri": dead, "max_retries": 1, "timeout_s": 2}})
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable after 1 retries"):
        train(params, root)
    with pytest.raises(TrackingError, match="unreachable"):
        register(params, root)
    assert time.monotonic() - started < 60
    assert {p: p.read_bytes() for p in (root / "models").glob("generator.*")} == before
    assert json.loads((root / "reports" / "register.json").read_text())["version"] == "1"
    # and the stage runs again once the store is back: the same registration, so its own version again
    assert register(tiny(), root)["version"] == "1"
    assert len(client_for(root).search_model_versions("name = 'ganops-generator'")) == 1


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = spawn(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "artifacts"),
         "--workers", "1"], folder / "server.log", cwd=folder,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/health", server)
    yield url
    stop(server)


@pytest.mark.system
def test_registers_on_two_hosts_decide_one_after_the_other(project, mlflow_server, tmp_path):
    """Two `ganops register` processes against one tracking server, each with its own cache folder (no
    lock file in common, as on two hosts), their decisions forced to meet: the registry's lock orders them."""
    from mlflow import MlflowClient

    roots = [Path(shutil.copytree(project, tmp_path / name, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts")))
             for name in ("a", "b")]
    for root in roots:
        write_params(root / "params.yaml", merge(TRACKED, {"register": {"model_name": "hosts"}}))
    envs = [{**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "TQDM_DISABLE": "1",
             "GANOPS_CACHE": str(tmp_path / f"cache-{root.name}")} for root in roots]
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.create_experiment("hosts")
    _new_run_in(client, experiment, roots)
    first = subprocess.run([sys.executable, "-m", "ganops.cli", "register"], cwd=roots[0], env=envs[0],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    _new_run_in(client, experiment, roots)
    _good_and_better(roots)
    decisions = _race_register(roots, envs, tmp_path / "rendezvous")
    _assert_one_after_the_other(decisions, "1")
    assert float(client.get_model_version_by_alias("hosts", "champion").tags["metric_value"]) == pytest.approx(0.001)
    assert [m.name for m in client.search_registered_models("name = 'hosts.lock'")] == []  # released


@pytest.mark.system
def test_against_a_real_tracking_server(mlflow_server, tmp_path):
    # Retries on, as in production: the server drops idle keep-alive connections after 5 s, and a request that
    # races that close is reset once; MLflow's retry is what absorbs it.
    server_params = {"mlflow": {"tracking_uri": mlflow_server, "max_retries": 2}}
    result = run_pipeline(tmp_path, server_params)
    assert result["promoted"] is True
    rows = list_versions(tiny(server_params).mlflow, tiny(server_params).register, tmp_path)
    assert [r["version"] for r in rows] == ["1"] and rows[0]["aliases"] == "champion"
    assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
    generator = open_generator("models:/ganops-generator@champion", tiny(server_params).mlflow)
    assert generator.sample(2, 0)[0].shape == (2, 1, 8, 8)


@pytest.mark.system
def test_mlflow_models_serve_can_serve_the_champion(project, tmp_path):
    root = Path(shutil.copytree(project, tmp_path / "p"))
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = spawn([str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/ganops-generator@champion",
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], tmp_path / "models-serve.log",
                   cwd=root, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/ping", server)
        body = {"inputs": {"z": [[0.0] * 8, [0.5] * 8], "labels": [1, 2]}}
        response = httpx.post(url + "/invocations", json=body, timeout=30)
        assert response.status_code == 200, response.text
        images = response.json()["predictions"]["images"]
        assert len(images) == 2 and len(images[0]) == 1 and len(images[0][0]) == 8
    finally:
        stop(server)


class FailingProxy:
    """A loopback HTTP proxy in front of a real tracking server. Once ``failing`` is set and the new model
    version carries its digest tag, it answers 503 to the next read of the registered model (where the
    champion alias lives), once: a transient outage at the worst moment (after the new version is logged
    and tagged), and only there, so whatever register does next is decided on a working registry."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        target = urlparse(upstream)
        proxy = self
        self.failing = False
        self.tripped = False
        self.refuse_downloads = False  # 503 for every artifact download while set
        self.failed_lookups = 0
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.refuse_downloads and self.command == "GET" and "mlflow-artifacts/artifacts" in self.path:
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy.failing and "model-versions/set-tag" in self.path and b"onnx_sha256" in body:
                    proxy.tripped = True
                if proxy.tripped and "registered-models/get" in self.path:
                    proxy.tripped = False  # once: the champion lookup fails, every later call answers
                    proxy.failed_lookups += 1
                    payload = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "503 from the test proxy"}'
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.system
def test_a_registry_error_never_promotes(mlflow_server, tmp_path):
    proxy = FailingProxy(mlflow_server)
    try:
        through_proxy = {"mlflow": {"tracking_uri": proxy.url, "max_retries": 0}, "register": {"model_name": "outage"}}
        first = run_pipeline(tmp_path, through_proxy)
        assert first["promoted"] is True
        _make_excellent(tmp_path)  # a clearly better version: it would be promoted ...
        proxy.failing = True  # ... but the registry fails while register reads the champion
        with pytest.raises(TrackingError, match="could not read the champion of outage.*503"):
            register(tiny(through_proxy), tmp_path)
        assert proxy.failed_lookups == 1
    finally:
        proxy.close()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_registered_model("outage").aliases == {"champion": first["version"]}  # the alias stayed
    left_out = client.get_model_version("outage", str(int(first["version"]) + 1))
    assert left_out.tags["promoted"] == "false" and "not decided: could not read the champion" in \
        left_out.tags["promotion_reason"]  # registered, never promoted, and it says why


@pytest.mark.system
def test_a_failed_download_of_a_new_champion_is_retried(mlflow_server, tmp_path, monkeypatch):
    """The alias moves while the artifact store answers 503: the service keeps v1, says it is stale,
    waits out its backoff (a clock the test moves), then loads v2; the failed version is not marked seen."""
    from ganops.serving.app import ModelSource
    from ganops.serving.locate import RegistryLocator

    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    proxy = FailingProxy(mlflow_server)
    try:
        through_proxy = {"mlflow": {"tracking_uri": proxy.url, "max_retries": 0}, "register": {"model_name": "retry"}}
        first = run_pipeline(tmp_path / "p", through_proxy)
        now = [0.0]
        source = ModelSource(RegistryLocator("models:/retry@champion", tiny(through_proxy).mlflow, tmp_path),
                             None, retry_base_s=5.0, retry_max_s=20.0, clock=lambda: now[0])
        assert source.served.version == first["version"] and not source.stale
        _make_excellent(tmp_path / "p")
        second = register(tiny(through_proxy), tmp_path / "p")
        assert second["promoted"] is True
        proxy.refuse_downloads = True
        assert source.refresh() is False
        assert source.served.version == first["version"] and source.stale and "could not download" in source.last_error
        assert source.status()["retry_in_s"] == 5.0 and source.failures == 1
        now[0] = 4.9  # still backing off: no new attempt
        refused = proxy.refused
        assert source.refresh() is False and proxy.refused == refused
        now[0] = 5.0  # the retry, still refused: the wait doubles
        assert source.refresh() is False and proxy.refused > refused and source.status()["retry_in_s"] == 10.0
        proxy.refuse_downloads = False
        now[0] = 15.0
        assert source.refresh() is True
        assert source.served.version == second["version"] and not source.stale and source.last_error is None
    finally:
        proxy.close()


@pytest.mark.system
def test_a_tampered_registry_download_is_refused(project, tmp_path, monkeypatch):
    from ganops.serving.locate import RegistryLocator
    from ganops.serving.runtime import ModelError

    root = Path(shutil.copytree(project, tmp_path / "p"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))  # downloads go to the one ganops cache
    locator = RegistryLocator("models:/ganops-generator@champion", tiny().mlflow, root)
    path, version = locator.fetch()
    assert path.is_relative_to(tmp_path / "cache" / "models")
    assert version == "1" and OnnxGenerator(path).sample(1, 0)[0].shape == (1, 1, 8, 8)
    with open(path, "ab") as handle:  # the cached download changed behind ganops' back
        handle.write(b"\0")
    with pytest.raises(ModelError, match="has sha256 .* but v1 was registered with .*refusing"):
        locator.fetch()


def test_the_register_lock_of_a_local_store_lies_beside_it_or_in_the_cache(tmp_path, monkeypatch):
    from ganops.metrics.inception import default_weights_path
    from ganops.paths import cache_dir
    from ganops.tracking.store import lock_path

    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" == default_weights_path().parent
    assert lock_path("file:///srv/mlruns").parent == tmp_path / "cache"  # a file store: a lock on this machine
    assert lock_path("file:///srv/mlruns") != lock_path("file:///srv/other")
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.register.lock"  # beside the store


@pytest.mark.system
def test_connecting_leaves_the_process_environment_as_it_was(project, monkeypatch):
    from ganops.tracking.store import connect

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")  # the user's own setting
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    before = dict(os.environ)
    client = connect(tiny().mlflow, project)
    assert client.search_registered_models()  # a call through the scoped client
    assert dict(os.environ) == before
