"""The real `dvc repro` of the pipeline in a temporary git repository, with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_params

pytestmark = pytest.mark.system


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # where `ganops` and `dvc` are installed
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "TQDM_DISABLE": "1",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the register stage needs the store; training is watched (evaluations at steps 10 and 20)
    write_params(root / "params.yaml", {"mlflow": {"enabled": True}, "train": {"eval_every": 10}})
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "repro", cwd=root)
    return root


def test_repro_builds_every_output(dvc_project):
    root = dvc_project
    for path in ("data/prepared/manifest.json", "data/prepared/train/images-00000.npy", "models/generator.safetensors",
                 "models/generator.json", "reports/train.json", "reports/train_log.csv", "reports/train_watch.csv",
                 "reports/samples.png",
                 "models/evaluator.safetensors", "models/evaluator.json", "reports/evaluator.json",
                 "data/reference/reference.json", "reports/eval.json", "reports/eval_record.json",
                 "reports/eval_per_class.json", "reports/eval_truncation.json", "reports/eval_samples.png",
                 "models/generator.onnx", "reports/export.json", "reports/register.json", "reports/mlflow_run.json"):
        assert (root / path).is_file(), path
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train_evaluator", "reference_stats", "train", "evaluate", "export",
                                          "register"}
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["steps"] == 20


def test_metrics_show_the_headline_numbers_and_no_words_but_their_names(dvc_project):
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=dvc_project).stdout)
    (workspace,) = shown.values()  # the workspace: {"data": {file: {"data": {...}}}}
    evaluation = workspace["data"]["reports/eval.json"]["data"]
    words = {key: value for key, value in evaluation.items() if isinstance(value, str)}
    assert words and all(len(value) <= 24 for value in words.values()), words  # no prose, no digests
    assert not [key for key in evaluation if "_class" in key or "_psi" in key]
    assert evaluation["primary_metric"] in evaluation


def test_status_is_clean_and_second_repro_skips(dvc_project):
    status = sh("dvc", "status", cwd=dvc_project)
    assert "up to date" in status.stdout
    again = sh("dvc", "repro", cwd=dvc_project)
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout


def test_metrics_and_outputs_ignored_by_git(dvc_project):
    metrics = sh("dvc", "metrics", "show", cwd=dvc_project)
    assert "reports/train.json" in metrics.stdout and "images_per_s" in metrics.stdout
    for name in ("fd200_domain_train", "kid200_domain_train_mean", "precision200_domain_train",
                 "recall200_domain_train", "class_consistency200_domain_train", "test_accuracy"):
        assert name in metrics.stdout
    untracked = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=dvc_project).stdout
    for generated in ("data/prepared/", "models/generator.safetensors", "models/checkpoints/", "reports/samples.png",
                      "mlflow.db", "mlartifacts/"):
        assert generated not in untracked


def test_plots_show_the_losses_and_the_in_training_fid_by_step(dvc_project):
    shown = json.loads(sh("dvc", "plots", "show", "--json", cwd=dvc_project).stdout)
    assert not shown.get("errors"), shown.get("errors")
    (watched,) = shown["data"]["reports/train_watch.csv"]
    rows = watched["content"]["data"]["values"]
    assert [(int(row["step"]), row["metric"]) for row in rows] == [(10, "fd200_domain_train"), (20, "fd200_domain_train")]
    assert all(float(row["value"]) > 0 for row in rows)
    (losses,) = shown["data"]["reports/train_log.csv"]
    assert {int(row["step"]) for row in losses["content"]["data"]["values"]} == {5, 10, 15, 20}
    # the evaluation's rows: a bar per class, a bar per truncation psi; each file drawn once
    (per_class,) = shown["data"]["reports/eval_per_class.json"]
    assert [row["class"] for row in per_class["content"]["data"]["values"]] == [str(c) for c in range(10)]
    (truncation,) = shown["data"]["reports/eval_truncation.json"]
    assert [row["psi"] for row in truncation["content"]["data"]["values"]][0] == "none"
    assert set(shown["data"]) == {"reports/train_log.csv", "reports/train_watch.csv", "reports/eval_per_class.json",
                                  "reports/eval_truncation.json"}


def test_misspelt_key_fails_and_keeps_prepared_data(dvc_project):
    root = dvc_project
    prepared = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "data" / "prepared").rglob("*") if p.is_file()}
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    params["data"]["resolutoin"] = params["data"].pop("resolution")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        result = sh("dvc", "repro", cwd=root, check=False)
        assert result.returncode != 0
        assert "data.resolutoin: unknown key" in result.stdout + result.stderr
        assert {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "data" / "prepared").rglob("*")
                if p.is_file()} == prepared
    finally:
        (root / "params.yaml").write_text(original)
    assert "up to date" in sh("dvc", "status", cwd=root).stdout


def test_changing_train_params_retrains_without_preparing(dvc_project, tmp_path):
    # on a copy of the repository (its git history, DVC cache and MLflow store with it): the module's
    # stays as `dvc repro` left it, so the tests after this one need no repro of their own first
    root = Path(shutil.copytree(dvc_project, tmp_path / "repo", symlinks=True))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["steps"] = 25
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = sh("dvc", "repro", cwd=root)
    assert "Stage 'prepare' didn't change" in result.stdout
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout  # a new generator is scored again
    assert "Running stage 'export'" in result.stdout
    assert "Running stage 'register'" in result.stdout
    listing = sh("ganops", "models", "list", cwd=root).stdout
    assert listing.count("champion") == 1 and len(listing.strip().splitlines()) == 3  # header + 2 versions
    assert "Stage 'train_evaluator' didn't change" in result.stdout
    assert "Stage 'reference_stats' didn't change" in result.stdout  # a new generator reuses the reference statistics
    assert "up to date" in sh("dvc", "status", cwd=root).stdout


@pytest.mark.parametrize("edited, stale", [
    ("src/ganops/stages/export.py", {"export"}),
    # an evaluate-only metric, or a report's figure, reruns no training (train's scorer is metrics/snapshot.py)
    ("src/ganops/metrics/scores.py", {"evaluate"}),
    ("src/ganops/metrics/neighbours.py", {"evaluate"}),
    ("src/ganops/figures.py", {"evaluate", "export", "register"}),  # export imports the registry, which attaches cards
    ("src/ganops/metrics/report.py", {"evaluate", "export", "register"}),  # eval.json's record: not train's
    ("src/ganops/metrics/snapshot.py", {"train"}),  # the in-training score (its checkpoints stay valid)
    ("src/ganops/serving/app.py", set()),  # the HTTP service is no stage's code
    ("src/ganops/serving/runtime.py", {"export", "register"}),  # not the FID reference statistics, not evaluate
    ("src/ganops/metrics/fid_weights.py", set()),  # installing the FID weights is no stage's code
    ("src/ganops/training/losses.py", {"train"}),
    ("src/ganops/config.py", {"prepare", "train", "train_evaluator", "reference_stats", "evaluate", "export",
                              "register"}),  # every stage validates its params with it
])
def test_editing_one_stages_code_marks_only_that_stage(dvc_project, edited, stale):
    """`dvc status` after an edit: the stages whose code the file is, no others (their descendants
    then rerun only if its outputs change)."""
    import json

    if json.loads(sh("dvc", "status", "--json", cwd=dvc_project).stdout):  # an earlier test left it behind
        sh("dvc", "repro", cwd=dvc_project)
    path = dvc_project / edited
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(sh("dvc", "status", "--json", cwd=dvc_project).stdout)
        assert set(status) == stale
    finally:
        path.write_text(original)
