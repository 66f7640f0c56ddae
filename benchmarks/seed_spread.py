"""The default generator's quality as a user gets it: the standard FID over several training seeds.

Quality, not speed. The evaluation's 95 % interval (half-sampling) covers the noise of scoring one
trained generator; it says nothing of the spread between training runs, which is what a user who
runs ``dvc repro`` draws from. Here the train and evaluate stages themselves (``train()``,
``evaluate()``) run with params.yaml as it is except ``train.seed``, once per seed, each in its own
folder on the same prepared data, domain classifier and reference statistics (evaluation seeds stay
params.yaml's: only training varies). Printed per seed: the primary FID with its interval, the
chosen step, precision, recall; then the median and range over the seeds.

The shared inputs come from ``--project`` (a folder where ``dvc repro`` ran, e.g. one kept by
``benchmarks/pipeline.py --keep``; default the repository), which must hold data/prepared,
data/reference and the domain classifier.

    python benchmarks/seed_spread.py [--seeds 0 1 2] [--project DIR]

Last lines: ``fid_median_over_seeds=``, ``fid_max_over_seeds=``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import describe_recipe, median, print_environment
from ganops.config import load_params
from ganops.paths import ProjectPaths
from ganops.stages.evaluate import evaluate
from ganops.stages.train import train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--project", type=Path, default=REPO)
    args = parser.parse_args()
    source = ProjectPaths(args.project.resolve())
    shared = [source.prepared, source.reference, source.evaluator_weights, source.evaluator_spec, source.evaluator_report]
    missing = [str(p) for p in shared if not p.exists()]
    if missing:
        parser.error(f"--project {args.project} lacks {', '.join(missing)}: run `dvc repro` there first")
    machine = print_environment(())
    base = load_params(args.project / "params.yaml")
    print(describe_recipe(base, args.project / "params.yaml"))
    print(f"eval.seed {base.eval.seed} (every seed's); training seeds {args.seeds}", flush=True)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="ganops-seed-spread-"))
    try:
        for seed in args.seeds:
            root = work / f"seed{seed}"
            paths = ProjectPaths(root)
            for item, target in zip(shared, (paths.prepared, paths.reference, paths.evaluator_weights,
                                             paths.evaluator_spec, paths.evaluator_report)):
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if item.is_dir() else shutil.copyfile)(item, target)
            params = base.model_copy(update={"train": base.train.model_copy(update={"seed": seed}),
                                             "mlflow": base.mlflow.model_copy(update={"enabled": False})})
            started = time.perf_counter()
            trained = train(params, root)
            report = evaluate(params, root)
            primary = report["primary_metric"]
            rows.append({"seed": seed, "fid": report[primary], "low": report[f"{primary}_ci95_low"],
                         "high": report[f"{primary}_ci95_high"], "chosen_step": trained.get("chosen_step"),
                         "precision": next(v for k, v in report.items() if k.startswith("precision")),
                         "recall": next(v for k, v in report.items() if k.startswith("recall")),
                         "weights": trained["weights_sha256"][:16], "seconds": time.perf_counter() - started})
            print(f"seed {seed}: {primary} {rows[-1]['fid']:.2f} [{rows[-1]['low']:.2f}, {rows[-1]['high']:.2f}], "
                  f"chosen step {rows[-1]['chosen_step']}, precision {rows[-1]['precision']:.3f}, recall "
                  f"{rows[-1]['recall']:.3f}, weights {rows[-1]['weights']}, {rows[-1]['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fids = [row["fid"] for row in rows]
    print(f"\n{primary} over training seeds {args.seeds}: median {median(fids):.2f}, range {min(fids):.2f}-{max(fids):.2f}; "
          f"each seed's 95 % interval (evaluation noise only): "
          + ", ".join(f"[{row['low']:.2f}, {row['high']:.2f}]" for row in rows))
    print(json.dumps(rows))
    machine.finish()
    print(f"fid_median_over_seeds={median(fids):.2f}")
    print(f"fid_max_over_seeds={max(fids):.2f}")


if __name__ == "__main__":
    main()
