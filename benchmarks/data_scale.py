"""Data at scale: prepare throughput against torchvision's ImageFolder + DataLoader, peak memory of
every stage at two data set sizes, and training speed from the shards against from memory.

The work. The benchmark writes a synthetic image folder per size (``--sizes``, default 10,000 and
100,000 images; 10 class sub-folders; 64x64 RGB, each image an 8x8 block of seeded noise upsampled
bilinearly, so the files are real, smooth, compressible PNG or JPEG, ``--format``), reused between
runs. Then, per size:

* **prepare throughput**: ganops' prepare stage (``ganops.stages.prepare.prepare``: list, decode,
  fit to 64x64x3, split, write the uint8 shards and the manifest, hashing every file and shard) and,
  over the same files with the same number of worker processes, two torchvision passes that decode
  every image to a uint8 CHW tensor at 64x64 and write each batch to a ``.npy`` file (the same
  output: the decoded images on disk): ``ImageFolder`` with its default PIL loader and
  ``PILToTensor``, and ``ImageFolder`` with ``torchvision.io.decode_image`` as the loader and the v2
  transforms on tensors, as torchvision's "performance considerations" advise; both through a
  ``DataLoader(batch_size=256, num_workers=W)`` (W = ``--workers``, default one per core, the same as
  ganops' ``data.workers: 0``). Every side runs in a fresh process; the time is of the work alone
  (imports excluded) and the images/s are the folder's image count over it. Sides in alternating
  order, ``--rounds`` rounds; the headline ratio is against the faster torchvision pass.
* **peak memory**: the peak resident memory of each stage run as a user runs it (``ganops prepare``,
  ``train``, ``train-evaluator``, ``reference-stats``, ``evaluate`` in a project whose params.yaml
  points at the folder), summed over the stage's process and its children (prepare's workers),
  sampled every 20 ms with psutil. Training reads from the shards (``train.in_memory_max_mb: 0``:
  what a data set beyond the in-memory limit gets); evaluation uses the domain backbone
  (``eval.backbone: domain``): the FID Inception network on 100,000 images is hours on a CPU.
* **training images/s from the shards vs from memory**: at the smallest size, ``ganops train`` with
  ``train.in_memory_max_mb: 0`` against the default (the split held in memory), the same steps and
  seed, alternating, ``--rounds`` rounds; images/s as the train stage reports it.

Last lines: ``prepare_speedup_vs_torchvision_imagefolder=`` (median over rounds at the largest size,
against the faster torchvision pass) and ``peak_rss_ratio_100k_vs_10k=`` (largest size's peak over
the smallest's, the largest ratio of the stages).

    python benchmarks/data_scale.py                                  # 10k and 100k PNG, all cores
    python benchmarks/data_scale.py --sizes 10000 --rounds 3 --format jpeg
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import yaml

from _common import describe_recipe, median, print_environment, round_order, spread

RESOLUTION = 64
CLASSES = 10
STAGES = ("prepare", "train", "train-evaluator", "reference-stats", "evaluate")
PREPARE_SIDES = ("ganops", "torchvision-pil", "torchvision-io")


# --- the synthetic folder -------------------------------------------------------------------------


def _write_images(job: tuple[str, str, int, int]) -> None:
    from PIL import Image

    root, fmt, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        block = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(block, "RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
        path = Path(root) / f"class{i % CLASSES:02d}" / f"{i:07d}.{'png' if fmt == 'png' else 'jpg'}"
        image.save(path, quality=90) if fmt == "jpeg" else image.save(path)


def synthetic_folder(root: Path, count: int, fmt: str, workers: int) -> Path:
    """``count`` images under ``root`` in CLASSES sub-folders; written once, reused after."""
    folder = root / f"{fmt}-{count}"
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{count} {fmt} {RESOLUTION}":
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in range(CLASSES):
        (folder / f"class{label:02d}").mkdir(parents=True)
    step = 2000
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_images, [(str(folder), fmt, s, min(s + step, count)) for s in range(0, count, step)]))
    marker.write_text(f"{count} {fmt} {RESOLUTION}")
    print(f"wrote {count} {fmt} images to {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


# --- what runs in a fresh process (``--child``) ---------------------------------------------------


def _tv_decode(path: str):
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.RGB)


def child_torchvision(folder: Path, out: Path, workers: int, loader: str) -> float:
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if loader == "pil":  # ImageFolder as its docs show it: PIL images, then to a uint8 tensor
        dataset = ImageFolder(str(folder), transform=transforms.Compose([
            transforms.Resize(RESOLUTION), transforms.CenterCrop(RESOLUTION), transforms.PILToTensor()]))
    else:  # torchvision.io decoding and v2 transforms on tensors ("performance considerations")
        dataset = ImageFolder(str(folder), loader=_tv_decode, transform=v2.Compose([
            v2.Resize(RESOLUTION, antialias=True), v2.CenterCrop(RESOLUTION)]))
    data = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=workers, shuffle=False)
    out.mkdir(parents=True)
    started = time.perf_counter()
    for k, (images, labels) in enumerate(data):
        np.save(out / f"images-{k:05d}.npy", images.numpy())
        np.save(out / f"labels-{k:05d}.npy", labels.numpy())
    return time.perf_counter() - started


def child_prepare(project: Path) -> float:
    from ganops.config import load_params
    from ganops.stages.prepare import prepare

    params = load_params(project / "params.yaml")
    started = time.perf_counter()
    prepare(params, project)
    return time.perf_counter() - started


def run_child(*args: str) -> float:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stdout}\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


# --- peak memory of a process tree ----------------------------------------------------------------


def peak_rss_of(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``command``; returns (peak resident MiB summed over it and its children, wall seconds)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "TQDM_DISABLE": "1"})
    peak = 0
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
    reader.start()
    root = psutil.Process(process.pid)
    while process.poll() is None:
        total = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total)
        time.sleep(0.02)
    reader.join()
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{b''.join(output).decode(errors='replace')}")
    return peak / 2**20, time.perf_counter() - started


# --- the project ----------------------------------------------------------------------------------


def write_project(project: Path, folder: Path, workers: int, steps: int, in_memory_max_mb: float) -> None:
    from ganops.config import Params

    params = Params().model_dump(mode="json")
    params["data"].update(source="imagefolder", path=str(folder), resolution=RESOLUTION, channels=3, workers=workers)
    params["model"].update(g_channels=16, d_channels=16, max_channels=128)
    params["train"].update(steps=steps, batch_size=64, log_every=10, checkpoint_every=steps, device="cpu",
                           augment="none", in_memory_max_mb=in_memory_max_mb)
    params["eval"].update(backbone="domain", device="cpu", num_samples=1000, draws=5, spread_rounds=2,
                          kid_subsets=10, kid_subset_size=500, batch_size=250)
    params["eval"]["evaluator"].update(epochs=1, width=8, batch_size=256)
    params["mlflow"]["enabled"] = False
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--format", default="png", choices=["png", "jpeg"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="training steps of each train run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ganops-data-scale"),
                        help="where the synthetic folders (kept) and the projects (removed) go")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            print(child_prepare(Path(rest[0])))
        else:
            print(child_torchvision(Path(rest[0]), Path(rest[1]), int(rest[2]), rest[3]))
        return

    machine = print_environment(["torchvision", "pillow", "psutil"])
    print(f"work: synthetic {args.format.upper()} folders of {', '.join(map(str, args.sizes))} images, "
          f"{RESOLUTION}x{RESOLUTION} RGB, {CLASSES} classes; {args.workers} worker processes on every side; "
          f"{args.rounds} rounds")
    ganops = str(Path(sys.executable).parent / "ganops")
    results: dict = {"sizes": {}}
    for size in args.sizes:
        folder = synthetic_folder(args.root, size, args.format, args.workers)
        project = args.root / f"project-{size}"
        shutil.rmtree(project, ignore_errors=True)
        write_project(project, folder, args.workers, args.steps, in_memory_max_mb=0.0)
        if size == args.sizes[0]:
            from ganops.config import load_params

            print(describe_recipe(load_params(project / "params.yaml"), f"{project / 'params.yaml'}, written by "
                                  "write_project (every size's the same but data.path; in_memory_max_mb 0, 2048 "
                                  "when training from memory)"), flush=True)
        # prepare throughput, sides alternating
        seconds: dict[str, list[float]] = {side: [] for side in PREPARE_SIDES}
        for index in range(args.rounds):
            for side in round_order(PREPARE_SIDES, index):
                out = args.root / "torchvision-out"
                shutil.rmtree(out, ignore_errors=True)
                if side == "ganops":
                    shutil.rmtree(project / "data", ignore_errors=True)
                    seconds[side].append(run_child("prepare", str(project)))
                else:
                    seconds[side].append(run_child("torchvision", str(folder), str(out), str(args.workers),
                                                   side.split("-")[1]))
                print(f"{size} images, round {index + 1}: {side:>16} {size / seconds[side][-1]:8.0f} img/s "
                      f"({seconds[side][-1]:.1f} s)", flush=True)
        shutil.rmtree(args.root / "torchvision-out", ignore_errors=True)
        rates = {side: [size / s for s in values] for side, values in seconds.items()}
        speedups = {side: [a / b for a, b in zip(rates["ganops"], rates[side])] for side in PREPARE_SIDES[1:]}
        # peak memory of each stage as a user runs it
        shutil.rmtree(project / "data", ignore_errors=True)
        peaks = {}
        for stage in STAGES:
            peaks[stage], wall = peak_rss_of([ganops, stage], project)
            print(f"{size} images: ganops {stage:<16} peak RSS {peaks[stage]:7.0f} MiB  ({wall:.0f} s)", flush=True)
        manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
        results["sizes"][size] = {"rates": rates, "speedups": speedups, "peak_rss_mib": peaks,
                                  "num_train": manifest["num_train"], "shards": len(manifest["files"]["train"]["shards"])}
        print(f"{size} images: prepare img/s " + ", ".join(f"{side} {spread(rates[side], 0)}" for side in PREPARE_SIDES))
        print(f"{size} images: prepare speedup " + ", ".join(f"vs {side} {spread(speedups[side])}" for side in PREPARE_SIDES[1:]))

    # training from the shards vs from memory, at the smallest size
    size = min(args.sizes)
    project = args.root / f"project-{size}"
    train_rates: dict[str, list[float]] = {"shards": [], "memory": []}
    for index in range(args.rounds):
        for side in round_order(("shards", "memory"), index):
            shutil.rmtree(project / "models", ignore_errors=True)  # no resuming: each run trains from step 0
            write_project(project, synthetic_folder(args.root, size, args.format, args.workers), args.workers,
                          args.steps, in_memory_max_mb=0.0 if side == "shards" else 2048.0)
            subprocess.run([ganops, "train"], cwd=project, check=True, capture_output=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
            report = json.loads((project / "reports" / "train.json").read_text())
            assert report["images_from"] == side, report["images_from"]
            train_rates[side].append(report["images_per_s"])
            print(f"train at {size} images, round {index + 1}: from {side:<7} {train_rates[side][-1]:7.1f} img/s", flush=True)
    train_ratio = [a / b for a, b in zip(train_rates["shards"], train_rates["memory"])]
    print(f"training img/s from the shards / from memory at {size} images: {spread(train_ratio, 3)}")
    results["train_images_per_s"] = train_rates

    small, large = min(args.sizes), max(args.sizes)
    ratios = {stage: results["sizes"][large]["peak_rss_mib"][stage] / results["sizes"][small]["peak_rss_mib"][stage]
              for stage in STAGES}
    print("peak RSS ratio " + f"{large} vs {small}: " + ", ".join(f"{stage} {ratio:.3f}" for stage, ratio in ratios.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    best_peer = max(PREPARE_SIDES[1:], key=lambda side: median(results["sizes"][large]["rates"][side]))
    machine.finish()
    print(f"train_images_per_s_ratio_shards_vs_memory={median(train_ratio):.3f}")
    print(f"prepare_speedup_vs_torchvision_imagefolder={median(results['sizes'][large]['speedups'][best_peer]):.3f}")
    print(f"peak_rss_ratio_{large // 1000}k_vs_{small // 1000}k={max(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
