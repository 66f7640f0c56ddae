"""What the metrics beyond one FID cost: `ganops evaluate` at the defaults on one built project, run
by two ganops source trees (before: a checkout without them; after: this one), in alternating order
over several rounds. Both score the same generator against the same cached reference statistics;
the difference is the per-class metrics, density/coverage, FD-infinity, memorisation and the
truncation curve's extra generated images.

    python benchmarks/evaluate_cost.py --project DIR --before SRC [--after src] [--rounds 2]

DIR: a project after a full `dvc repro` (data/prepared, data/reference, models/, reports/mlflow_run.json).
SRC: the ``src`` folder of the other checkout (e.g. `git worktree add /tmp/before <commit>`).
Figures: wall seconds of the whole `ganops evaluate` process, median [min-max] over the rounds.

Last line: ``evaluate_cost_ratio=<median over the rounds of after / before>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_times, describe_load, describe_recipe, median, print_environment, round_order, spread
from ganops.config import load_params


def commit_of(src: Path) -> str:
    """The HEAD commit of the checkout holding ``src``, noting uncommitted changes to its tracked files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=src, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "not a git checkout"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_evaluate(project: Path, src: Path) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("ganops")), "evaluate"], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((project / "reports" / "eval.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    machine = print_environment(["onnxruntime", "torch_fidelity", "prdc"])
    sources = {"before": args.before, "after": args.after}
    print(f"project: {args.project.resolve()}; " + ", ".join(f"{side}: {src.resolve()} at {commit_of(src)}"
                                                         for side, src in sources.items()))
    print(describe_recipe(load_params(args.project / "params.yaml"), (args.project / "params.yaml").resolve()), flush=True)
    seconds: dict[str, list[float]] = {side: [] for side in sources}
    for index in range(args.rounds):
        for side in round_order(list(sources), index):
            load = cpu_times()
            wall, report = run_evaluate(args.project, sources[side])
            seconds[side].append(wall)
            print(f"round {index + 1} {side}: {wall:.1f} s, {report['primary_metric']} {report[report['primary_metric']]}"
                  f", {len(report)} fields; during: {describe_load(load, cpu_times())}", flush=True)
    for side, values in seconds.items():
        print(f"{side}: evaluate {spread(values, 1)} s")
    ratios = [after / before for after, before in zip(seconds["after"], seconds["before"])]
    print(f"after / before per round: {spread(ratios, 3)}")
    machine.finish()
    print(f"evaluate_cost_ratio={median(ratios):.3f}")


if __name__ == "__main__":
    main()
