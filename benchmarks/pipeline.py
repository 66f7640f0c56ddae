"""The pipeline itself: a fresh-clone-equivalent ``dvc repro`` with the defaults, wall time per stage.

Each round clones the repository's committed HEAD into a new temporary folder (no DVC cache, no
outputs, no MLflow store: what a user has after ``git clone``; the FID Inception weights that
./setup.sh installs stay where it put them) and runs every stage of dvc.yaml in its file order, which
is its dependency order, each as ``dvc repro --single-item <stage>`` (exactly what ``dvc repro`` runs,
stage by stage, so each gets its own wall time; DVC's own start-up, about a second, is inside each).
The stages run with this Python environment's ``ganops`` and ``dvc`` (the venv's bin first on PATH).
Not a peer comparison: what a fresh ``dvc repro`` costs on this machine, to scale to another by its
measured peak. Figures: seconds median [min-max] over the rounds.

    python benchmarks/pipeline.py [--rounds 3] [--repo .] [--keep DIR]

``--keep DIR`` moves the last round's clone, with its outputs and MLflow store, to DIR (to inspect).

Last line: ``fresh_clone_dvc_repro_s=<median total seconds>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import describe_recipe, median, print_environment, spread
from ganops.config import validate_params


def stages_of(repo: Path) -> list[str]:
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


def run_round(repo: Path, stages: list[str], env: dict[str, str], keep: Path | None = None) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="ganops-pipeline-"))
    try:
        clone = folder / "clone"
        subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
        seconds = {}
        for stage in stages:
            started = time.perf_counter()
            done = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=clone, env=env,
                                  capture_output=True, text=True)
            seconds[stage] = time.perf_counter() - started
            if done.returncode:
                sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                raise SystemExit(f"stage {stage} failed (exit code {done.returncode})")
        if keep is not None:
            shutil.move(str(clone), str(keep))
        return seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--keep", type=Path, help="move the last round's clone here (must not exist)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists")
    repo = args.repo.resolve()
    machine = print_environment(("dvc", "mlflow", "onnxruntime"))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True).stdout.strip()
    print(f"repository: {repo} at {head}" + (" (uncommitted changes are NOT measured: the clone is HEAD)" if dirty else ""))
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, text=True, check=True)
    print(describe_recipe(validate_params(yaml.safe_load(committed.stdout), "HEAD:params.yaml"),
                          f"{repo / 'params.yaml'} as committed at {head}"), flush=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: an sqlite store inside the clone
    stages = stages_of(repo)
    rounds: list[dict[str, float]] = []
    for index in range(args.rounds):
        rounds.append(run_round(repo, stages, env, args.keep if index == args.rounds - 1 else None))
        total = sum(rounds[-1].values())
        print(f"round {index + 1}: " + ", ".join(f"{s} {t:.0f} s" for s, t in rounds[-1].items())
              + f"; total {total:.0f} s ({total / 60:.1f} min)", flush=True)
    print(f"\n{'stage':16s} {'seconds median [min-max]':26s}")
    for stage in stages:
        print(f"{stage:16s} {spread([r[stage] for r in rounds], 1):26s}")
    totals = [sum(r.values()) for r in rounds]
    print(f"{'total':16s} {spread(totals, 1):26s} = {median(totals) / 60:.1f} min (median)")
    machine.finish()
    print(f"fresh_clone_dvc_repro_s={median(totals):.0f}")


if __name__ == "__main__":
    main()
