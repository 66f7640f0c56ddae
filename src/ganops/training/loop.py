"""The train stage: one loop, read top to bottom.

Every output of a run lands in models/ and reports/; checkpoints in models/checkpoints/ (a DVC
``persist`` output) let a killed run pick up where it stopped and end with the same weights.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from tqdm import tqdm

from ganops import GanopsError
from ganops.config import Params
from ganops.data import load_manifest, load_split
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.models import DiscriminatorSpec, GeneratorSpec, build_discriminator, build_generator
from ganops.paths import ProjectPaths
from ganops.tracking.runs import log_training, preflight
from ganops.training.checkpoint import capture_rng_states, load_resumable, restore_rng_states, save_checkpoint
from ganops.training.ema import ema_decay, update_ema
from ganops.training.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from ganops.visualize import save_grid, to_uint8

log = logging.getLogger(__name__)
LOG_FIELDS = ["step", "loss_d", "loss_g", "d_real", "d_fake", "penalty", "images_per_s", "wall_time_s"]
# Knobs that change how long or how visibly a run goes, not what it computes: a checkpoint written
# under other values of these can still be resumed.
_NOT_IN_FINGERPRINT = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "device"}


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise GanopsError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def generator_spec(params: Params, manifest: dict) -> GeneratorSpec:
    return GeneratorSpec(
        latent_dim=params.model.latent_dim,
        g_channels=params.model.g_channels,
        max_channels=params.model.max_channels,
        resolution=manifest["resolution"],
        channels=manifest["channels"],
        num_classes=manifest["num_classes"] if params.model.conditional else 0,
        class_names=manifest["class_names"] if params.model.conditional else [],
        data_checksum=manifest["files"]["train"]["sha256"],
    )


def discriminator_spec(params: Params, manifest: dict) -> DiscriminatorSpec:
    return DiscriminatorSpec(
        d_channels=params.model.d_channels,
        max_channels=params.model.max_channels,
        spectral_norm=params.model.spectral_norm,
        resolution=manifest["resolution"],
        channels=manifest["channels"],
        num_classes=manifest["num_classes"] if params.model.conditional else 0,
    )


def _code_digest() -> str:
    """The training code itself (the train stage's DVC deps) and the torch version: a checkpoint
    written by other code must not be resumed, even under the same params."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for folder in ("models", "training"):
        for source in sorted((package / folder).glob("*.py")):
            digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def _fingerprint(params: Params, manifest: dict) -> str:
    setup = {
        "code": _code_digest(),
        "data": manifest["files"]["train"]["sha256"],
        "model": params.model.model_dump(),
        "train": params.train.model_dump(exclude=_NOT_IN_FINGERPRINT),
    }
    return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()


class BatchStream:
    """Endless shuffled batches; epoch ``e`` is ordered by a permutation seeded with (seed, e), so the
    stream's whole state is two integers and a resumed run sees the same batches."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        if num_items < batch_size:
            raise GanopsError(f"train.batch_size={batch_size} is larger than the {num_items} training images")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.epoch, self.position = epoch, position
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=generator)

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.num_items:  # drop the ragged tail of each epoch
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def train(params: Params, root: Path = Path(".")) -> dict:
    """Train a GAN on data/prepared and write the EMA generator, its spec, reports and samples."""
    paths = ProjectPaths(root)
    cfg = params.train
    manifest = load_manifest(paths.prepared)
    images_u8, labels_all = load_split(paths.prepared, "train")
    device = resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    preflight(params, root)
    run_started_at = time.time()

    # --- networks, optimisers, state -------------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    g_spec, d_spec = generator_spec(params, manifest), discriminator_spec(params, manifest)
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    G = build_generator(g_spec).to(device, memory_format=memory_format)
    D = build_discriminator(d_spec).to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    adam = {"fused": True} if on_cuda else {"foreach": True}
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), **adam)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    stream = BatchStream(len(labels_all), cfg.batch_size, cfg.seed)
    images = torch.from_numpy(images_u8).to(device)  # uint8 on the device; scaled per batch
    labels = torch.from_numpy(labels_all).to(device)
    conditional = g_spec.conditional
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()

    fingerprint = _fingerprint(params, manifest)
    start_step, elapsed_before, log_rows = 0, 0.0, []
    window = torch.zeros(5, device=device)  # running sums of loss_d, loss_g, d_real, d_fake, penalty
    window_steps = 0
    resumed = load_resumable(paths.checkpoints, fingerprint, cfg.steps)
    if resumed is not None:
        G.load_state_dict(resumed["generator"])
        D.load_state_dict(resumed["discriminator"])
        G_ema.load_state_dict(resumed["generator_ema"])
        opt_g.load_state_dict(resumed["opt_g"])
        opt_d.load_state_dict(resumed["opt_d"])
        restore_rng_states(resumed["rng"], noise)
        stream = BatchStream(len(labels_all), cfg.batch_size, cfg.seed, **resumed["stream"])
        start_step, elapsed_before, log_rows = resumed["step"], resumed["elapsed_s"], resumed["log"]
        window, window_steps = resumed["window"].to(device), resumed["window_steps"]
        log.info("resuming from checkpoint at step %d", start_step)

    def real_batch() -> tuple[torch.Tensor, torch.Tensor | None]:
        index = stream.next().to(device)
        batch = images[index].float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format)
        return batch, (labels[index] if conditional else None)

    def checkpoint_state(step: int, elapsed: float) -> dict:
        return {
            "step": step, "fingerprint": fingerprint, "elapsed_s": elapsed, "log": log_rows,
            "generator": G.state_dict(), "discriminator": D.state_dict(), "generator_ema": G_ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": capture_rng_states(noise),
            "stream": stream.state(), "window": window.cpu(), "window_steps": window_steps,
        }

    # --- the loop ----------------------------------------------------------------------------------
    started = time.perf_counter()
    last_log_time, last_log_step = started, start_step
    progress = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", mininterval=1.0, dynamic_ncols=True)
    G.train()
    D.train()
    for step in range(start_step, cfg.steps):
        # Discriminator: d_steps updates on fresh real batches and detached fakes.
        D.requires_grad_(True)
        for _ in range(cfg.d_steps):
            real, y = real_batch()
            z = torch.randn(real.shape[0], g_spec.latent_dim, device=device, generator=noise)
            with torch.no_grad(), autocast:
                fake = G(z, y).float()
            if cfg.r1_gamma > 0:
                real.requires_grad_(True)
            with autocast:
                d_real, d_fake = D(real, y).float(), D(fake, y).float()
            loss_d = discriminator_loss(cfg.loss, d_real, d_fake)
            penalty = torch.zeros((), device=device)
            if cfg.loss == "wgan-gp" and cfg.gp_weight > 0:
                penalty = penalty + cfg.gp_weight * gradient_penalty(lambda x: D(x, y), real.detach(), fake, noise)
            if cfg.r1_gamma > 0:
                penalty = penalty + 0.5 * cfg.r1_gamma * r1_penalty(d_real, real)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            opt_d.step()

        # Generator: the non-saturating / hinge / Wasserstein step through a frozen D.
        D.requires_grad_(False)
        z = torch.randn(cfg.batch_size, g_spec.latent_dim, device=device, generator=noise)
        with autocast:
            loss_g = generator_loss(cfg.loss, D(G(z, y), y).float())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        update_ema(G, G_ema, ema_decay(cfg.ema_decay, step - cfg.ema_start))

        # Bookkeeping stays on the device; it is read (a host sync) only every log_every steps.
        window += torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().mean(), d_fake.detach().mean(), penalty.detach()])
        window_steps += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            means = (window / window_steps).tolist()
            row = dict(zip(LOG_FIELDS[1:6], (round(v, 6) for v in means)))
            row.update(step=done, images_per_s=round((done - last_log_step) * cfg.batch_size / (now - last_log_time), 2),
                       wall_time_s=round(elapsed_before + now - started, 3))
            log_rows.append(row)
            progress.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", img_s=f"{row['images_per_s']:.0f}")
            window.zero_()
            window_steps, last_log_time, last_log_step = 0, now, done
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(paths.checkpoints, done, checkpoint_state(done, elapsed_before + time.perf_counter() - started), cfg.keep_checkpoints)
        progress.update(1)
    progress.close()
    wall_time = elapsed_before + time.perf_counter() - started

    # --- outputs -----------------------------------------------------------------------------------
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in G_ema.state_dict().items()}
    write_bytes_atomic(paths.generator_weights, safetensors_save(weights, metadata={"format": "pt"}))
    g_spec.save(paths.generator_spec)
    _write_log(paths.reports / "train_log.csv", log_rows)
    _write_samples(G_ema, g_spec, paths.reports / "samples.png", device, cfg.seed)
    final = log_rows[-1] if log_rows else {}
    summary = {
        "steps": cfg.steps,
        "wall_time_s": round(wall_time, 3),
        "images_per_s": round(cfg.steps * cfg.batch_size / wall_time, 2) if wall_time > 0 else 0.0,
        "resumed_from_step": start_step,
        **{key: final[key] for key in ("loss_d", "loss_g", "d_real", "d_fake") if key in final},
    }
    write_json_atomic(paths.reports / "train.json", summary)
    log.info("trained %d steps in %.1f s on %s", cfg.steps, wall_time, device)
    # Tracking comes last: if the store fails now, every output above is kept and a re-run resumes
    # from the final checkpoint straight to this point.
    log_training(params, root, manifest, summary, log_rows, run_started_at,
                 [paths.reports / "samples.png", paths.reports / "train_log.csv", paths.generator_spec])
    return summary


def _write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


@torch.no_grad()
def _write_samples(G_ema: torch.nn.Module, spec: GeneratorSpec, path: Path, device: torch.device, seed: int) -> None:
    """A fixed-noise grid: one row per class when conditional, else 8 x 8."""
    rows, cols = (spec.num_classes, 8) if spec.conditional else (8, 8)
    generator = torch.Generator().manual_seed(seed + 2)
    z = torch.randn(rows * cols, spec.latent_dim, generator=generator).to(device)
    y = torch.arange(rows).repeat_interleave(cols).to(device) if spec.conditional else None
    save_grid(to_uint8(G_ema(z, y)), rows, path)
