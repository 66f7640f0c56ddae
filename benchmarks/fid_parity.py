"""FID parity: ganops' Inception path (torch-fidelity features + our Fréchet distance) against
pytorch-fid's own pipeline, on the same images, with the real FID Inception weights.

Needs both weight files, which can't be downloaded on the development machines:
  $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth   (torch-fidelity)
  $TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth        (pytorch-fid)
Compares the prepared train and test splits (run `dvc repro prepare` first). Last line:
``fid_relative_difference_vs_pytorch_fid=<ratio>``; exits 1 above 1e-3 (0.1 %), 2 when weights are missing.

    python benchmarks/fid_parity.py [--prepared data/prepared] [--limit 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ganops.data import load_split
from ganops.metrics.backbones import InceptionBackbone, default_inception_weights, extract_features
from ganops.metrics.frechet import frechet_distance_of_features


def pytorch_fid_features(images_u8: np.ndarray, batch_size: int = 100) -> np.ndarray:
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images_u8), batch_size):
            batch = torch.from_numpy(images_u8[start : start + batch_size]).float() / 255.0
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            out.append(model(batch)[0].squeeze(-1).squeeze(-1).double().numpy())
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    ours_weights = default_inception_weights()
    theirs_weights = ours_weights.with_name("pt_inception-2015-12-05-6726825d.pth")
    for path in (ours_weights, theirs_weights):
        if not path.is_file():
            print(f"missing weights file: {path}", file=sys.stderr)
            return 2
    real, _ = load_split(args.prepared, "train")
    other, _ = load_split(args.prepared, "test")
    real, other = real[: args.limit], other[: args.limit]

    backbone = InceptionBackbone(ours_weights, torch.device("cpu"))
    ours = frechet_distance_of_features(
        extract_features(backbone, [torch.from_numpy(real[i : i + 100]) for i in range(0, len(real), 100)], len(real), "train").numpy(),
        extract_features(backbone, [torch.from_numpy(other[i : i + 100]) for i in range(0, len(other), 100)], len(other), "test").numpy(),
    )
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = pytorch_fid_features(real), pytorch_fid_features(other)
    theirs = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    relative = abs(ours - theirs) / abs(theirs)
    print(f"images: {len(real)} train vs {len(other)} test from {args.prepared}")
    print(f"ganops fid_inception: {ours:.6f}   pytorch-fid: {theirs:.6f}")
    print(f"fid_relative_difference_vs_pytorch_fid={relative:.6f}")
    return 0 if relative <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
