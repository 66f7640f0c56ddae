"""FID parity: each of ganops' FID protocols against the pipeline of the tool that defines it, on the
same images and the same FID Inception-v3 tensors (./setup.sh installs them).

- ``tf``: torch-fidelity's ``calculate_metrics`` (its extractor, its TF-style resize, its FID).
- ``pytorch-fid``: pytorch-fid's ``calculate_fid_given_paths`` on the images written as PNG.
- ``clean``: clean-fid's ``compute_fid`` on the PNG folders (its reading, resizer and FID), feeding the
  FID TorchScript from the pinned wheel (the network clean-fid itself uses).

Images: the prepared train split against the test split (run `dvc repro prepare` first).

    python benchmarks/fid_parity.py [--prepared data/prepared] [--train 1000] [--test 500]

Last line: ``fid_relative_difference_vs_pytorch_fid=<x>``; exits 1 when any protocol differs from its
owner by more than 1e-4 (relative).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import print_environment
from ganops.data import load_split
from ganops.metrics.fid_weights import TORCHSCRIPT_MEMBER, WHEEL_FILE
from ganops.metrics.frechet import frechet_distance_of_features
from ganops.metrics.inception import InceptionFeatureExtractor, default_weights_path, load_network
from ganops.paths import cache_dir


def write_pngs(images: np.ndarray, folder: Path) -> str:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    a, _ = load_split(args.prepared, "train")
    b, _ = load_split(args.prepared, "test")
    a, b = a[: args.train], b[: args.test]
    scratch = Path(tempfile.mkdtemp())
    network, _ = load_network(default_weights_path())
    state = dict(network.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # the layout's classifier: unused
    (scratch / "hub" / "checkpoints").mkdir(parents=True)
    pth = scratch / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, pth)
    os.environ["TORCH_HOME"] = str(scratch)
    folders = [write_pngs(a, scratch / "a"), write_pngs(b, scratch / "b")]

    def ours(protocol: str) -> float:
        extractor = InceptionFeatureExtractor(default_weights_path(), protocol)
        return frechet_distance_of_features(extractor(torch.from_numpy(a)).double().numpy(),
                                            extractor(torch.from_numpy(b)).double().numpy())

    import torch_fidelity

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = torch.from_numpy(images).expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    def torch_fidelity_fid() -> float:
        metrics = torch_fidelity.calculate_metrics(input1=Images(a), input2=Images(b), fid=True, cuda=False, verbose=False,
                                                   batch_size=50, feature_extractor_weights_path=str(pth))
        return metrics["frechet_inception_distance"]

    def pytorch_fid_fid() -> float:
        from pytorch_fid.fid_score import calculate_fid_given_paths

        return float(calculate_fid_given_paths(folders, 50, "cpu", 2048, num_workers=0))

    def clean_fid_fid() -> float:
        from cleanfid import fid as clean_fid

        with zipfile.ZipFile(cache_dir() / WHEEL_FILE) as archive:
            (scratch / "default_1.pt").write_bytes(archive.read(TORCHSCRIPT_MEMBER))
        torchscript = torch.jit.load(str(scratch / "default_1.pt"), map_location="cpu").eval()

        class Features(torch.nn.Module):
            def forward(self, x):
                with torch.no_grad():
                    return torchscript((x - 128) / 128)

        return float(clean_fid.compute_fid(folders[0], folders[1], mode="clean", custom_feat_extractor=Features(),
                                           device=torch.device("cpu"), num_workers=0, batch_size=50, verbose=False))

    machine = print_environment(("onnxruntime", "torch-fidelity", "pytorch-fid", "clean-fid", "scipy"))
    print(f"images: {len(a)} train vs {len(b)} test from {args.prepared}; weights {default_weights_path()}")
    worst, relatives = 0.0, {}
    for protocol, owner, theirs in (("tf", "torch-fidelity", torch_fidelity_fid), ("pytorch-fid", "pytorch-fid", pytorch_fid_fid),
                                    ("clean", "clean-fid", clean_fid_fid)):
        mine, reference = ours(protocol), theirs()
        relative = abs(mine - reference) / abs(reference)
        worst = max(worst, relative)
        relatives[protocol] = relative
        print(f"protocol {protocol:12s} ganops {mine:.6f}   {owner:15s} {reference:.6f}   relative difference {relative:.2e}",
              flush=True)
    relative_tf, relative_pfid, relative_clean = relatives["tf"], relatives["pytorch-fid"], relatives["clean"]
    machine.finish()
    print(f"fid_relative_difference_vs_torch_fidelity={relative_tf:.2e}")
    print(f"fid_relative_difference_vs_clean_fid={relative_clean:.2e}")
    print(f"fid_relative_difference_vs_pytorch_fid={relative_pfid:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
