"""Small data: standard FID of generators trained on 500 images with train.augment none, diffaugment, ada.

The work, identical for every side: the default data set (params.yaml's data section, MNIST 5k at
32x32) is prepared as the pipeline prepares it; ``--images`` of its training split, drawn once with
a fixed seed (stratified by nothing: a plain uniform draw without replacement), are the whole training
set. Each side trains params.yaml's default model and training recipe on them -- same steps, batch,
learning rates, EMA -- differing only in ``train.augment`` (and ``train.seed``, the same set of seeds
for every side), through ganops' own training loop (``ganops.training.loop.fit``). Each generator is
then scored as the evaluate stage scores one: standard FID (torch-fidelity's protocol, the Inception
network ./setup.sh installs) of ``eval.num_samples`` generated images, labels drawn with the
reference's class frequencies, against the **whole** training split of the default data set (not
just the images the generator saw), with the evaluate stage's 95 % interval (half-sample bootstrap
over eval.spread_rounds, evaluation noise only: it does not cover the spread between training seeds,
which is why each side runs several seeds).

Rounds: one per seed, the sides in alternating order (FID does not depend on the order; the
convention is kept so that every benchmark here reads alike). Last lines: ``fid_<side>=`` the median
over seeds, and ``fid_ratio_<side>_vs_none=`` the median over seeds of the per-seed ratio.

    python benchmarks/small_data.py                       # 500 images, seeds 0 1, 4000 steps, CPU
    python benchmarks/small_data.py --images 2000 --seeds 0 1 2 --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import describe_recipe, print_environment, round_order, spread
from ganops.config import load_params
from ganops.data import load_split
from ganops.data.prepare import write_prepared
from ganops.data.shards import SplitIndex
from ganops.device import resolve_device
from ganops.metrics.backbones import InceptionBackbone, extract_features
from ganops.metrics.draws import generated_draws, sample_labels
from ganops.metrics.evaluation import score_draws
from ganops.metrics.frechet import feature_statistics
from ganops.metrics.inception import default_weights_path
from ganops.metrics.names import Measurement
from ganops.metrics.reference import ReferencedBackbone, ReferenceFeatures
from ganops.metrics.scores import METRICS, spread_method
from ganops.stages.train import discriminator_spec, generator_spec
from ganops.training.augment import resolve_augment
from ganops.training.loop import TrainingJob, fit

SIDES = ("none", "diffaugment", "ada")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="training images drawn from the default data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed values, one round each")
    parser.add_argument("--steps", type=int, default=None, help="generator steps (default: params.yaml's)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = parser.parse_args()

    machine = print_environment(["torch-fidelity", "onnxruntime"])
    params = load_params(args.params)
    device = resolve_device(args.device, "--device")
    train_cfg = params.train.model_copy(update={"device": device.type, **({"steps": args.steps} if args.steps else {})})
    eval_cfg = params.eval
    print(describe_recipe(params.model_copy(update={"train": train_cfg}), args.params)
          + f"; train.augment per side: {', '.join(args.sides)}")
    weights = Path(eval_cfg.inception_weights) if eval_cfg.inception_weights else default_weights_path()
    if not weights.exists():
        sys.exit(f"the FID Inception weights are not installed ({weights}); run ./setup.sh first")

    work = Path(tempfile.mkdtemp(prefix="ganops-small-data-"))
    manifest = write_prepared(params.data, work / "prepared")
    images, labels = load_split(work / "prepared", "train")
    chosen = np.sort(np.random.default_rng(0).choice(len(images), size=args.images, replace=False))
    subset_images, subset_labels = np.ascontiguousarray(images[chosen]), labels[chosen]
    subset_digest = hashlib.sha256(subset_images.tobytes() + subset_labels.tobytes()).hexdigest()
    subset_manifest = manifest.model_copy(update={
        "num_train": args.images, "files": {**manifest.files, "train": SplitIndex(
            count=args.images, shard_size=args.images, shape=list(images.shape[1:]), shards=[], sha256=subset_digest)}})
    print(f"data: {args.images} of the {len(images)} training images of {params.data.source} "
          f"({params.data.resolution}x{params.data.resolution}, {manifest.num_classes} classes; subset sha256 "
          f"{subset_digest[:16]}); reference: all {len(images)}")
    epochs = train_cfg.steps * train_cfg.batch_size / args.images
    print(f"training: {train_cfg.steps} steps x batch {train_cfg.batch_size} ({epochs:.0f} "
          f"epochs of the subset), loss {train_cfg.loss}, lr {train_cfg.lr_g}/{train_cfg.lr_d}, ada target "
          f"{train_cfg.ada_target}, kimg {train_cfg.ada_kimg}, interval {train_cfg.ada_interval}; on {device}")

    measurement = Measurement("inception", eval_cfg.fid_protocol, eval_cfg.num_samples, "train")
    backbone = InceptionBackbone(weights, eval_cfg.fid_protocol, device)
    real_features = extract_features(backbone, (torch.from_numpy(images[i : i + eval_cfg.batch_size])
                                                for i in range(0, len(images), eval_cfg.batch_size)),
                                     len(images), "reference")
    reference = ReferenceFeatures(real_features, *feature_statistics(real_features), {})
    print(f"metric: {measurement.primary}, 95% interval: {spread_method(eval_cfg, eval_cfg.draws)}")

    results: list[dict] = []
    for round_index, seed in enumerate(args.seeds):
        for side in round_order(args.sides, round_index):
            cfg = train_cfg.model_copy(update={"augment": side, "seed": seed})
            started = time.perf_counter()
            augmentation = resolve_augment(cfg.augment, subset_manifest.source, args.images, cfg.augment_auto_below)
            result = fit(TrainingJob(generator_spec(params.model, subset_manifest),
                                     discriminator_spec(params.model, subset_manifest), cfg, augmentation, subset_images,
                                     subset_labels, work / f"checkpoints-{side}-{seed}"))
            train_s = time.perf_counter() - started
            generator = result.G_ema.eval()
            sampled = sample_labels(labels, eval_cfg.num_samples, manifest.num_classes, eval_cfg.seed) \
                if generator.spec.conditional else None
            draws = generated_draws(generator, sampled, eval_cfg.num_samples, eval_cfg.draws, eval_cfg.batch_size,
                                    eval_cfg.seed, device)
            metrics = score_draws(draws, sampled, [ReferencedBackbone(backbone, reference)], eval_cfg,
                                  (METRICS["fd"],)).metrics
            fid = metrics[measurement.primary]
            low, high = metrics[f"{measurement.primary}_ci95_low"], metrics[f"{measurement.primary}_ci95_high"]
            row = {"side": side, "seed": seed, "fid": fid, "ci95": [low, high], "augment_p": result.summary.augment_p,
                   "real_sign": result.log_rows[-1]["real_sign"], "train_s": round(train_s, 1)}
            results.append(row)
            print(f"round {round_index + 1} seed {seed} {side:>11}: {measurement.primary} {fid:.2f} [{low:.2f}, {high:.2f}]"
                  f"  final p {row['augment_p']:.3f}  E[sign D(real)] {row['real_sign']:.3f}  train {train_s:.0f} s",
                  flush=True)

    print()
    machine.finish()
    by_side = {side: [r for r in results if r["side"] == side] for side in args.sides}
    for side, rows in by_side.items():
        print(f"{side:>11}: {measurement.primary} {spread([r['fid'] for r in rows])} over seeds {[r['seed'] for r in rows]}")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "steps": train_cfg.steps, "results": results}, indent=1))
    for side, rows in by_side.items():
        print(f"fid_{side}={float(np.median([r['fid'] for r in rows])):.2f}")
    if "none" in by_side:
        baseline = {r["seed"]: r["fid"] for r in by_side["none"]}
        for side, rows in by_side.items():
            if side != "none":
                print(f"fid_ratio_{side}_vs_none={float(np.median([r['fid'] / baseline[r['seed']] for r in rows])):.3f}")


if __name__ == "__main__":
    main()
