"""The best snapshot against the final one: what watching training buys, and what it costs.

The work: params.yaml's data, model and training recipe, trained by the train stage itself (in-training
evaluations every train.eval_every steps on train.eval_samples images, the kept snapshots re-scored
on fresh seeds, the chosen one shipped), for two recipes -- the default, and an unstable one (RECIPES
below: the discriminator's learning rate 10x the generator's, Adam beta1 0.9, no EMA) -- and two
training seeds each. In the first --rank-seeds seeds' runs every evaluated snapshot (its EMA weights
from a checkpoint written at that step), in the others the final and the chosen one, are then scored
with the evaluate stage's full protocol: eval.num_samples
images on the evaluate stage's own seeds, against the whole reference split, with its 95 % interval
(half-sampling; evaluation noise only, which is why each recipe runs several seeds). From those:

- the final snapshot's FID against the shipped (chosen) one's, with their intervals;
- how the in-training score (few images, biased upward at small N) ranks the snapshots against the
  full protocol (Spearman's rho over the evaluated snapshots of the ranked runs);
- the cost: the in-training evaluations and the final re-scoring as a share of the run's training
  time, both timed inside the same process (reports/train.json's watch_s, choose_s, wall_time_s).

Rounds: one per seed, the recipes in alternating order. Last lines: ``fid_ratio_chosen_vs_final_<recipe>=``
(median over seeds) and ``best_vs_final_fid_ratio=`` (the median over the unstable recipe's runs).

    python benchmarks/best_snapshot.py                       # seeds 0 1, 2-core CPU: about an hour
    python benchmarks/best_snapshot.py --seeds 0 1 2 --steps 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from _common import describe_recipe, print_environment, round_order, spread
from ganops.config import Params, load_params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.metrics.draws import generated_draws, sample_labels
from ganops.metrics.evaluation import score_draws
from ganops.metrics.names import Measurement
from ganops.metrics.reference import open_backbones, resolve_reference
from ganops.metrics.scores import METRICS, spread_method
from ganops.models import GeneratorSpec, build_generator
from ganops.paths import ProjectPaths
from ganops.stages.prepare import prepare
from ganops.stages.reference_stats import reference_stats
from ganops.stages.train import train
from ganops.training.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
# unstable: the discriminator's learning rate 10x the generator's, Adam beta1 0.9 (DCGAN's paper chose 0.5
# because 0.9 oscillated) and no EMA; the hinge loss with betas (0, 0.9) and a 10x learning rate alone
# were tried first and still improved to the last step on this data
RECIPES = {"default": {}, "unstable": {"lr_d": 5e-3, "beta1": 0.9, "ema_decay": 0.0}}


def shared_inputs(params: Params, work: Path) -> Path:
    """data/prepared and data/reference for every run: the repo's own when `dvc repro` made them for
    these params, else prepared and computed here once."""
    root = work / "shared"
    paths, repo = ProjectPaths(root), ProjectPaths(REPO)
    if repo.prepared.is_dir() and repo.reference.is_dir():
        shutil.copytree(repo.prepared, paths.prepared)
        shutil.copytree(repo.reference, paths.reference)
    else:
        prepare(params, root)
        reference_stats(params, root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed values, one round each")
    parser.add_argument("--steps", type=int, default=None, help="generator steps (default: params.yaml's)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    parser.add_argument("--rank-seeds", type=int, default=1, help="in the runs of the first this many seeds, score "
                        "every evaluated snapshot with the full protocol (for the ranking); in the others, only the "
                        "final and the chosen one")
    args = parser.parse_args()

    machine = print_environment(["torch-fidelity", "onnxruntime"])
    params = load_params(args.params)
    device = resolve_device(args.device, "--device")
    overrides = {"device": device.type, **({"steps": args.steps} if args.steps else {})}
    base = params.model_copy(update={"train": params.train.model_copy(update=overrides),
                                     "eval": params.eval.model_copy(update={"device": device.type}),
                                     "mlflow": params.mlflow.model_copy(update={"enabled": False})})
    cfg, watch = base.eval, base.train
    if not watch.eval_every:
        sys.exit("train.eval_every is 0 in these params: nothing is watched")
    work = Path(tempfile.mkdtemp(prefix="ganops-best-snapshot-"))
    shared = shared_inputs(base, work)
    manifest = load_manifest(ProjectPaths(shared).prepared)
    real = open_split(ProjectPaths(shared).prepared, cfg.reference)
    expected, inception = resolve_reference(cfg.backbone, cfg.inception_weights, cfg.fid_protocol, cfg.reference,
                                            device, manifest, cfg.reference_max_features)
    if inception is None:
        sys.exit(f"the FID Inception weights are not installed ({expected.fallback_reason}); run ./setup.sh first")
    (primary,) = open_backbones(expected, inception, ProjectPaths(shared).reference, (Path("-"), Path("-")), real,
                                cfg.reference, cfg.batch_size, cfg.reference_max_features, device, primary_only=True)
    measurement = Measurement("inception", cfg.fid_protocol, cfg.num_samples, cfg.reference)
    print(describe_recipe(base, args.params) + (f" (train.steps from --steps {args.steps})" if args.steps else ""))
    print(f"training: {watch.steps} steps x batch {watch.batch_size}, {args.params}'s recipe; unstable: "
          f"{RECIPES['unstable']}; watched every {watch.eval_every} steps on {watch.eval_samples} images, "
          f"keep_best {watch.keep_best}, noise_z {watch.noise_z}, diverge_factor {watch.diverge_factor}; on {device}")
    print(f"full protocol: {measurement.primary} on the evaluate stage's seeds; interval: "
          f"{spread_method(cfg, cfg.draws)}")

    def full_protocol(spec: GeneratorSpec, weights: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        generator = build_generator(spec).to(device).eval()
        generator.load_state_dict(weights)
        labels = sample_labels(real.labels, cfg.num_samples, spec.num_classes, cfg.seed) if spec.conditional else None
        draws = generated_draws(generator, labels, cfg.num_samples, cfg.draws, cfg.batch_size, cfg.seed, device)
        metrics = score_draws(draws, labels, [primary], cfg, (METRICS["fd"],)).metrics
        name = measurement.primary
        return metrics[name], metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"]

    results: list[dict] = []
    for round_index, seed in enumerate(args.seeds):
        for recipe in round_order(args.recipes, round_index):
            root = work / f"{recipe}-{seed}"
            for folder in ("prepared", "reference"):
                shutil.copytree(shared / "data" / folder, root / "data" / folder)
            # a checkpoint at every evaluation, all kept: each evaluated snapshot is scored again below
            run = base.model_copy(update={"train": watch.model_copy(update={
                **RECIPES[recipe], "seed": seed, "checkpoint_every": watch.eval_every, "keep_checkpoints": 1000})})
            started = time.perf_counter()
            summary = train(run, root)
            stage_s = time.perf_counter() - started
            spec = GeneratorSpec.load(ProjectPaths(root).generator_spec)
            with ProjectPaths(root).train_watch.open() as handle:
                in_training = {int(r["step"]): float(r["value"]) for r in csv.DictReader(handle)}
            (folder,) = [p for p in ProjectPaths(root).checkpoints.iterdir() if p.is_dir()]
            ema = {step: torch.load(path, map_location="cpu", weights_only=True)["generator_ema"]
                   for step, path in list_checkpoints(folder)}
            final_step, chosen_step = summary["steps_done"], summary["chosen_step"]
            ranked = round_index < args.rank_seeds
            full = {step: full_protocol(spec, ema[step]) for step in sorted(in_training)
                    if step in ema and (ranked or step in (final_step, chosen_step))}
            scored = sorted(full)
            rho = float(spearmanr([in_training[s] for s in scored], [full[s][0] for s in scored]).statistic) \
                if ranked and len(scored) >= 3 else float("nan")
            training_s = summary["wall_time_s"] - summary["watch_s"]
            row = {"recipe": recipe, "seed": seed, "final_step": final_step, "chosen_step": chosen_step,
                   "stopped_early": summary["stopped_early"], "chosen_because": summary["chosen_because"],
                   "final": full[final_step], "chosen": full[chosen_step], "ratio": full[chosen_step][0] / full[final_step][0],
                   "in_training": in_training, "full": {s: full[s][0] for s in scored}, "spearman": rho,
                   "overhead": (summary["watch_s"] + summary["choose_s"]) / training_s, "watch_s": summary["watch_s"],
                   "choose_s": summary["choose_s"], "training_s": round(training_s, 1), "stage_s": round(stage_s, 1)}
            results.append(row)
            print(f"round {round_index + 1} seed {seed} {recipe:>8}: final (step {final_step}) "
                  f"{row['final'][0]:.2f} [{row['final'][1]:.2f}, {row['final'][2]:.2f}]  chosen (step {chosen_step}) "
                  f"{row['chosen'][0]:.2f} [{row['chosen'][1]:.2f}, {row['chosen'][2]:.2f}]  ratio {row['ratio']:.3f}  "
                  f"spearman {rho:.2f} over {len(scored)} snapshots  watch {summary['watch_s']:.0f} s + choose "
                  f"{summary['choose_s']:.0f} s over training {training_s:.0f} s ({100 * row['overhead']:.1f} %)"
                  + (f"  stopped: {row['stopped_early']}" if row["stopped_early"] else ""), flush=True)
            print(f"    in training ({summary['watch_metric']}) by step: {in_training}; full protocol: {row['full']}; "
                  f"shipped: {summary['chosen_because']}", flush=True)

    print()
    machine.finish()
    for recipe in args.recipes:
        rows = [r for r in results if r["recipe"] == recipe]
        print(f"{recipe:>8}: final {spread([r['final'][0] for r in rows])}, chosen {spread([r['chosen'][0] for r in rows])}"
              f" ({measurement.primary}, over seeds {[r['seed'] for r in rows]}); chosen/final "
              f"{spread([r['ratio'] for r in rows], 3)}; overhead {spread([100 * r['overhead'] for r in rows], 1)} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    for recipe in args.recipes:
        rows = [r for r in results if r["recipe"] == recipe]
        print(f"fid_ratio_chosen_vs_final_{recipe}={float(np.median([r['ratio'] for r in rows])):.3f}")
    unstable = [r["ratio"] for r in results if r["recipe"] == "unstable"]
    if unstable:
        print(f"best_vs_final_fid_ratio={float(np.median(unstable)):.3f}")


if __name__ == "__main__":
    main()
