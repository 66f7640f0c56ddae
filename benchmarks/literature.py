"""ganops next to published numbers: Lucic et al., "Are GANs Created Equal?" (NeurIPS 2018), MNIST and
Fashion-MNIST, on the study's protocol and budget, over several training seeds.

The study's protocol (google/compare_gan, ``eval_gan_lib.py``, ``fid_score.py``): FID of 10,000
generated images against the 10,000 images of the test split, at the data's native 28x28, under the
TF Inception graph's preprocessing; ganops names it ``fid10k_tf_test_28x28``. Its budget
(``generate_tasks_lib.py``): 20 epochs of 50,000 images at batch 64 (15,625 steps), unconditional, z of 64.

Each recipe (``recipes/<dataset>.yaml``, with ``--set`` overrides) is trained by the train stage's own
function, once per training seed, exactly as ``dvc repro`` trains it: the threads torch chooses, the
in-training scores and the shipped snapshot chosen against the validation split (never the test
split). Each generator is then scored once against the test split. The data are prepared and both
splits' reference features computed once per data set, in ``--work`` (kept: a rerun skips every seed
already scored there by the same code and params, so the runs can be spread over several sittings).

    python benchmarks/literature.py [--datasets mnist fashion-mnist] [--seeds 0 1 2] [--work DIR]
        [--set model.conditional=true --label conditional]

Printed per seed: the test FID with its 95 % interval (evaluation noise, half-sampling), the chosen
step and its validation score, the training and scoring times; per data set the median [min-max]
over the seeds beside the study's table. Last lines, for the recipes as committed:
``literature_mnist_median_fid=``, ``literature_fashion_mnist_median_fid=`` (with ``--label L``:
``literature_<dataset>_<L>_median_fid=``; a label marks another task or lever, not the comparison).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import yaml

from _common import describe_recipe, median, print_environment
from ganops.config import validate_params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.metrics.evaluation import ReferenceFiles, open_evaluation
from ganops.metrics.scores import METRICS
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.stages.prepare import prepare
from ganops.stages.reference_stats import reference_stats
from ganops.stages.train import train
from ganops.sweeps.spec import with_overrides

REPO = Path(__file__).resolve().parents[1]

# The study's Table (best of 100 settings per loss, mean +- std over its re-runs): FID on the test split.
PUBLISHED = {
    "mnist": {"WGAN": "6.7 ± 0.4", "NS GAN": "6.8 ± 0.5", "DRAGAN": "7.6 ± 0.4", "LSGAN": "7.8 ± 0.6",
              "MM GAN": "9.8 ± 0.9", "BEGAN": "13.1 ± 1.0", "WGAN-GP": "20.3 ± 5.0"},
    "fashion-mnist": {"WGAN": "21.5 ± 1.6", "BEGAN": "22.9 ± 0.9", "WGAN-GP": "24.5 ± 2.1", "NS GAN": "26.5 ± 1.6",
                      "DRAGAN": "27.7 ± 1.2", "MM GAN": "29.6 ± 1.6", "LSGAN": "30.7 ± 2.2"},
}
BEST_PUBLISHED = {"mnist": 6.7, "fashion-mnist": 21.5}


def recipe(dataset: str, overrides: dict[str, object], seed: int, reference: str) -> dict:
    """The committed recipe with ``overrides``, this training seed, this reference split, no MLflow."""
    tree = yaml.safe_load((REPO / "recipes" / f"{dataset}.yaml").read_text())
    settings = {**overrides, "train.seed": seed, "eval.reference": reference, "mlflow.enabled": False}
    return with_overrides(tree, settings, f"recipes/{dataset}.yaml")


def code_version() -> str:
    """The sha256 of the code that prepares, trains and scores: every src/ dependency that dvc.yaml
    lists for those stages (a change elsewhere, serving say, keeps the seeds already scored)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = {dep for name in ("prepare", "reference_stats", "train", "evaluate") for dep in stages[name]["deps"]
            if dep.startswith("src/")}
    files = sorted(f for dep in deps for f in ([REPO / dep] if (REPO / dep).is_file() else (REPO / dep).rglob("*.py")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def shared_inputs(dataset: str, folder: Path) -> Path:
    """``folder``/project: the prepared data and the validation split's reference (the training side);
    ``folder``/test: the test split's reference (the scoring side). Made once per data set from the
    committed recipe, for every lever and task: what they change (training, the model) is not in them."""
    project, test = folder / "project", folder / "test"
    train_params = validate_params(recipe(dataset, {}, 0, "validation"))
    if not (ProjectPaths(project).prepared / "manifest.json").exists():
        prepare(train_params, project)
    if not (ProjectPaths(project).reference / "reference.json").exists():
        reference_stats(train_params, project)
    link = ProjectPaths(test).prepared
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ProjectPaths(project).prepared.resolve())
    if not (ProjectPaths(test).reference / "reference.json").exists():
        reference_stats(validate_params(recipe(dataset, {}, 0, "test")), test)
    return project


def train_and_score(dataset: str, shared: Path, runs: Path, seed: int, overrides: dict[str, object]) -> dict:
    """One training seed: trained as the recipe says, then scored once against the test split."""
    root = runs / f"seed{seed}"
    for item in ("prepared", "reference"):
        link = root / "data" / item
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((shared / "project" / "data" / item).resolve())
    params = validate_params(recipe(dataset, overrides, seed, "validation"))
    started = time.perf_counter()
    trained = train(params, root)
    trained_at = time.perf_counter()
    cfg = validate_params(recipe(dataset, overrides, seed, "test")).eval
    paths, test = ProjectPaths(root), ProjectPaths(shared / "test")
    device = resolve_device(cfg.device, "eval.device")
    generator = load_generator(paths.generator_weights, paths.generator_spec, device)
    files = ReferenceFiles(test.reference, test.evaluator_weights, test.evaluator_spec)
    evaluation = open_evaluation(cfg, load_manifest(test.prepared), open_split(test.prepared, "test"),
                                 generator.spec, files, device, primary_only=True)
    scores = evaluation.score(generator, [METRICS["fd"]])
    name = scores.primary
    chosen = next((c for c in trained.get("candidates") or [] if c["step"] == trained["chosen_step"]), {})
    rescored = chosen.get("rescored") is not None  # else the in-training score, on fewer images, chose it
    return {"dataset": dataset, "seed": seed, "metric": name, "fid": scores.metrics[name],
            "low": scores.metrics[f"{name}_ci95_low"], "high": scores.metrics[f"{name}_ci95_high"],
            "chosen_step": trained.get("chosen_step"),
            "chosen_validation_score": chosen.get("rescored" if rescored else "in_training"),
            "validation_metric": trained.get("rescore_metric" if rescored else "watch_metric"),
            "weights": trained["weights_sha256"][:16], "threads": torch.get_num_threads(),
            "resumed_from_step": trained.get("resumed_from_step"), "train_s": trained_at - started,
            "score_s": time.perf_counter() - trained_at}


def run_dataset(dataset: str, seeds: list[int], work: Path, overrides: dict[str, object], label: str) -> list[dict]:
    shared, runs = work / dataset, work / dataset / (label or "recipe")
    settings = json.dumps(recipe(dataset, overrides, 0, "validation"), sort_keys=True)
    version = {"code": code_version(), "params_sha256": hashlib.sha256(settings.encode()).hexdigest()}
    print(f"\n{dataset}{' (' + label + ')' if label else ''}: recipes/{dataset}.yaml"
          + (f" with {overrides}" if overrides else "") + f"; code {version['code']}, params_sha256 "
          f"{version['params_sha256'][:16]}", flush=True)
    print(describe_recipe(validate_params(recipe(dataset, overrides, 0, "validation")), f"recipes/{dataset}.yaml"
                          + (f" with {overrides}" if overrides else "")) + " (trained vs validation, scored vs test)")
    project = shared_inputs(dataset, shared)
    rows = []
    for seed in seeds:
        done = runs / f"seed{seed}.json"
        if done.exists() and json.loads(done.read_text())["version"] == version:
            row = json.loads(done.read_text())["row"]
            print(f"seed {seed}: kept from {done}", flush=True)
        else:
            row = train_and_score(dataset, shared, runs, seed, overrides)
            done.write_text(json.dumps({"version": version, "row": row}, indent=1))
        rows.append(row)
        print(f"seed {seed}: {row['metric']} {row['fid']:.2f} [{row['low']:.2f}, {row['high']:.2f}], chosen step "
              f"{row['chosen_step']} ({row['validation_metric']} {row['chosen_validation_score']}), weights {row['weights']}, "
              f"{row['threads']} threads, train {row['train_s']:.0f} s"
              + (f" (resumed at step {row['resumed_from_step']})" if row.get("resumed_from_step") else "")
              + f", score {row['score_s']:.0f} s", flush=True)
    fids = [row["fid"] for row in rows]
    print(f"{dataset}: {rows[0]['metric']} over training seeds {seeds}: median {median(fids):.2f} "
          f"[{min(fids):.2f}-{max(fids):.2f}]; data prepared in {project}")
    print("  the study (test split, same protocol; best of 100 settings, mean ± std over re-runs): "
          + ", ".join(f"{model} {value}" for model, value in PUBLISHED[dataset].items()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"], choices=sorted(PUBLISHED))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "ganops-literature")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params overrides (a lever or another task), e.g. model.arch=resnet")
    parser.add_argument("--label", default="", help="names the runs of --set; required with it")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.overrides)}
    if bool(overrides) != bool(args.label):
        parser.error("--set and --label go together: runs with overrides are another task or lever")
    machine = print_environment(["torch_fidelity"])
    print(f"torch threads: {torch.get_num_threads()} (as `dvc repro` trains); work folder {args.work}", flush=True)
    medians = {}
    for dataset in args.datasets:
        rows = run_dataset(dataset, args.seeds, args.work, overrides, args.label)
        medians[dataset] = median([row["fid"] for row in rows])
        print(json.dumps(rows))
    machine.finish()
    for dataset, value in medians.items():
        name = dataset.replace("-", "_") + (f"_{args.label.replace('-', '_')}" if args.label else "")
        print(f"literature_{name}_median_fid={value:.2f}")


if __name__ == "__main__":
    main()
