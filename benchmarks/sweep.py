"""What pruning on the in-training FID saves, and what it costs: one seeded sweep run without a
pruner, with the default pruner (successive halving) and with the median pruner, on the same fresh
clone (so the same shared stages, data and evaluation).

Not a speed comparison against a peer: the figure is training steps, counted by the trials
themselves (reports/train.json's steps_done, summed over trials), which does not depend on the
machine's load. The sweeps draw their points with the same TPE seed; once a pruned sweep has
pruned a trial its history differs, so later points may differ, as they would for a user. The best
trials are compared with the registry's noise test (``better_beyond_noise``: the champion gate's).

To fit a 2-core CPU, the sweep scores with the domain classifier (``eval.backbone: domain``: the
Fréchet distance in the features of the pipeline's own digit classifier, fd2k_domain_train) instead
of the FID Inception network, and trains ``--steps`` steps per trial; every other knob is params.yaml's.

    python benchmarks/sweep.py [--trials 8] [--steps 2000] [--eval-every 250] [--workers 1] [--keep DIR]

Last line: ``pruned_compute_fraction=<steps trained with pruning / steps trained without>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import print_environment
from ganops.config import load_params
from ganops.tracking.registry import better_beyond_noise, improvement_needed

REPO = Path(__file__).resolve().parents[1]
# the default pruner (Optuna's SuccessiveHalvingPruner, its defaults) and the median pruner as an
# earlier run had it; pruned_compute_fraction is the default's
PRUNERS = {"unpruned": {"name": "none"},
           "pruned": {"name": "successive-halving"},
           "median": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 500}}


def sweep_file(folder: Path, study: str, trials: int, steps: int, eval_every: int, pruner: dict) -> Path:
    body = {
        "study": study, "trials": trials, "register": False,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": pruner,
        "fixed": {"train.steps": steps, "train.eval_every": eval_every},
        "space": {
            "train.lr_g": {"low": 5e-5, "high": 5e-3, "log": True},
            "train.lr_d": {"low": 5e-5, "high": 5e-3, "log": True},
            "train.beta1": {"choices": [0.0, 0.5]},
            "train.loss": {"choices": ["minimax", "hinge"]},
        },
    }
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="move the clone, with its experiments and stores, here")
    args = parser.parse_args()
    machine = print_environment(("optuna", "dvc", "mlflow"))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"repository: {REPO} at {head} (a fresh clone of HEAD); {args.trials} trials a sweep, {args.steps} steps "
          f"a trial, in-training evaluation every {args.eval_every} steps, {args.workers} worker(s); "
          f"pruners {json.dumps(PRUNERS)}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="ganops-sweep-bench-"))
    clone = folder / "clone"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", TQDM_DISABLE="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        env["PYTHONPATH"] = str(clone / "src")  # the clone's ganops, not the checkout's (which may change meanwhile)
        params = yaml.safe_load((clone / "params.yaml").read_text())
        params["eval"]["backbone"] = "domain"
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "commit", "--quiet", "-am", "benchmark: the domain backbone"], cwd=clone, check=True,
                       env=env | {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
                                  "GIT_COMMITTER_EMAIL": "b@b"})
        results = {}
        for side, pruner in PRUNERS.items():
            spec = sweep_file(folder, side, args.trials, args.steps, args.eval_every, pruner)
            started = time.perf_counter()
            done = subprocess.run([str(Path(sys.executable).parent / "ganops"), "sweep", str(spec), "--workers",
                                   str(args.workers)], cwd=clone, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                raise SystemExit(f"the {side} sweep failed (exit code {done.returncode})")
            results[side] = json.loads((clone / "reports" / "sweep.json").read_text()) | {"seconds": seconds}
            print(f"\n{side} sweep ({json.dumps(pruner)}), {seconds:.0f} s wall (the first includes the shared "
                  f"stages):\n{(clone / 'reports' / 'sweep.md').read_text()}", flush=True)
        register = load_params(clone / "params.yaml").register
        best = {side: next(r for r in result["trials"] if r["state"] == "complete") for side, result in results.items()}
        for side, result in results.items():
            b = best[side]
            print(f"{side}: {result['states']}, steps trained {result['steps_trained']}, best trial {b['trial']} "
                  f"{b['metric']} {b['value']:.3f} (std {b['std']:.3f}) {b['params']}")
        u = best["unpruned"]
        worse, share = {}, {}  # per pruned side: its best worse than the unpruned best beyond noise; its steps' share
        for side in (s for s in results if s != "unpruned"):
            p = best[side]
            worse[side] = better_beyond_noise(register, u["value"], u["std"], p["value"], p["std"])
            needed = improvement_needed(register, u["std"], p["std"])
            share[side] = results[side]["steps_trained"] / results["unpruned"]["steps_trained"]
            print(f"{side} vs unpruned: best {p['value']:.3f} vs {u['value']:.3f}, difference "
                  f"{p['value'] - u['value']:+.3f}, noise threshold {needed:.3f} (the registry's test): "
                  f"{'WORSE beyond noise' if worse[side] else 'within noise or better'}; steps {share[side]:.3f} of unpruned")
        machine.finish()
        if args.keep is not None:
            shutil.move(str(clone), str(args.keep))
        print(f"pruned_best_within_noise={str(not worse['pruned']).lower()}")
        print(f"pruned_compute_fraction={share['pruned']:.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
