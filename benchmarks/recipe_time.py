"""Time per 1,000 training images of a params recipe (default recipes/cifar10.yaml) on this
machine, on random data of the recipe's shape (speed does not depend on the pixels). Runs the real
train() (after an untimed warm-up train()) ``--rounds`` times; prints images/s and seconds per
1,000 images as median [min-max] over the rounds, and last ``seconds_per_1000_images=<median>``.
Not a peer comparison: how long the recipe's training budget takes on this machine.

    python benchmarks/recipe_time.py [--recipe recipes/cifar10.yaml] [--steps 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

# isort: off
import ganops  # noqa: F401  (before torch, as under the ganops CLI: its libgomp setting must precede libgomp's loading)
# isort: on

import numpy as np
import torch
import yaml

from _common import median, print_environment, spread
from _generator import write_random_prepared
from ganops.config import validate_params
from ganops.stages.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/cifar10.yaml"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="override the recipe's train.compile")
    args = parser.parse_args()
    raw = yaml.safe_load(args.recipe.read_text())
    raw["mlflow"]["enabled"] = False
    raw["train"].update(checkpoint_every=10**9, log_every=100)
    if args.compile is not None:
        raw["train"]["compile"] = args.compile
    if not torch.cuda.is_available():
        raw["train"].update(device="cpu", compile=False)
    raw["train"]["eval_every"] = 0  # the training loop's time (random data has no reference statistics)
    data = raw["data"]
    root = Path(tempfile.mkdtemp(prefix="ganops-recipe-"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10000, data["channels"], data["resolution"], data["resolution"]), dtype=np.uint8)
    write_random_prepared(root, images, num_classes=10)
    machine = print_environment(())
    warm = validate_params({**raw, "train": {**raw["train"], "steps": 50}})
    train(warm, root)  # warm-up and compilation, not timed
    rates = []
    for round_index in range(args.rounds):
        for checkpoint in (root / "models" / "checkpoints").rglob("*.pt"):  # every setup's folder: start afresh
            checkpoint.unlink()
        rates.append(train(validate_params({**raw, "train": {**raw["train"], "steps": args.steps}}), root)["images_per_s"])
        print(f"round {round_index + 1}: {rates[-1]:.0f} images/s", flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    per_1000 = [1000 / rate for rate in rates]
    print(f"recipe {args.recipe} on {device}: {spread(rates, 0)} images/s, {spread(per_1000, 4)} s per 1,000 images "
          f"(batch {raw['train']['batch_size']}, d_steps {raw['train']['d_steps']}, compile {raw['train']['compile']}, "
          f"{args.steps} steps, median [min-max] of {args.rounds} rounds)")
    machine.finish()
    print(f"seconds_per_1000_images={median(per_1000):.4f}")


if __name__ == "__main__":
    main()
