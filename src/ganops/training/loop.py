"""The training loop, read top to bottom: ``fit`` trains a generator and discriminator from their
specs on uint8 images and returns the EMA generator with its log. Checkpoints in a folder of its own
per setup let a killed run pick up where it stopped and end with the same weights. Files, params and
MLflow are the train stage's (ganops.stages.train).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from ganops import GanopsError
from ganops.config import TRAIN_RECIPE, TrainParams
from ganops.device import resolve_device
from ganops.models import DiscriminatorSpec, GeneratorSpec, build_discriminator, build_generator
from ganops.paths import TRAINING_CODE
from ganops.pixels import to_uint8
from ganops.training import distributed
from ganops.training.augment import AdaController
from ganops.training.checkpoint import (
    TrainingState,
    load_resumable,
    prune_stale,
    remove_partial_writes,
    run_folder,
    save_checkpoint,
)
from ganops.training.ema import ema_decay, update_ema
from ganops.training.step import REAL_SIGN, STEP_STATS, TrainStep
from ganops.training.watch import Choice, Scorer, Watch, choose_snapshot, cpu_weights, finite_weights

log = logging.getLogger(__name__)
# The columns of reports/train_log.csv: each row's step, the means of the step stats since the last
# row, the augmentation probability, the speed and the wall time.
LOG_FIELDS = ("step", *STEP_STATS, "augment_p", "images_per_s", "wall_time_s")
# The recipe but its length: a longer run of the same recipe resumes a shorter one's checkpoints.
_FINGERPRINTED = tuple(key for key in TRAIN_RECIPE if key != "steps")


def _code_digest() -> str:
    """The training code itself (TRAINING_CODE) and the torch version: a checkpoint written by other
    code must not be resumed, even under the same params."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for part in TRAINING_CODE:
        path = package / part
        for source in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def _check_ranks_agree(ctx, step: int, *networks) -> str:
    """All ranks must hold identical weights, or the run stops there, loudly. Returns their weights_digest."""
    digests = ctx.all_gather(distributed.weights_digest(*networks))
    if len(set(digests)) != 1:
        raise GanopsError(f"ranks diverged by step {step}: weight digests {digests}")
    return digests[0]


def _fingerprint(g_spec: GeneratorSpec, d_spec: DiscriminatorSpec, cfg: TrainParams, augmentation: str,
                 world_size: int, metric: str | None) -> str:
    """What a run computes: a checkpoint is resumed only by a run of the same fingerprint."""
    setup = {
        "watched_by": metric,  # the in-training metric's name: its protocol and sample count
        "code": _code_digest(),
        "world_size": world_size,
        "generator": g_spec.model_dump(mode="json"),  # with the training data's checksum
        "discriminator": d_spec.model_dump(mode="json"),
        "train": cfg.model_dump(include=set(_FINGERPRINTED)),
        "augmentation": augmentation,
    }
    return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()


def _resumable(ctx, checkpoints: Path, fingerprint: str, steps: int) -> dict | None:
    """The checkpoint to resume, on every rank: rank 0 picks it, the others load the same file."""
    resumed = load_resumable(checkpoints, fingerprint, steps) if ctx.is_main else None
    path = ctx.all_gather(str(resumed["path"]) if resumed else None)[0]
    if path and not ctx.is_main:
        resumed = torch.load(path, map_location="cpu", weights_only=True)
    return resumed


class BatchStream:
    """Endless shuffled batches for one rank. Each epoch is ordered by torch's DistributedSampler
    (seeded by train.seed and the epoch, each rank its own disjoint share), so the stream's whole
    state is two integers and a resumed run sees the same batches."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if num_items // world_size < batch_size:
            raise GanopsError(f"train.batch_size={batch_size * world_size} is larger than the {num_items} training images")
        self.sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batch_size, self.epoch, self.position, self.device = batch_size, 0, 0, device
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        """The epoch's order, on the device that holds the images: one copy per epoch, none per step."""
        self.sampler.set_epoch(self.epoch)
        return torch.tensor(list(iter(self.sampler)), dtype=torch.long).to(self.device)

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > len(self._order):  # drop the ragged tail of each epoch
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._epoch_order()


class ImageReader(Protocol):
    """A split of uint8 images read on demand (ganops.data.shards.PreparedSplit)."""

    nbytes: int

    def load(self) -> tuple[np.ndarray, np.ndarray]: ...

    def gather(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray: ...


class HeldImages:
    """The training images in memory: on the GPU when they fit comfortably, else in (pinned) host memory."""

    def __init__(self, images_u8: np.ndarray, device: torch.device) -> None:
        tensor = torch.from_numpy(images_u8)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            tensor = tensor.to(device) if tensor.numel() < 0.25 * free else tensor.pin_memory()
        self.tensor, self.device, self.shape = tensor, tensor.device, tuple(tensor.shape[1:])

    def gather(self, index: torch.Tensor, out: torch.Tensor) -> None:
        torch.index_select(self.tensor, 0, index, out=out)


class StreamedImages:
    """The training images left in their shards: each batch read from disk into a host buffer."""

    device = torch.device("cpu")

    def __init__(self, reader: ImageReader, shape: tuple[int, ...]) -> None:
        self.reader, self.shape = reader, shape

    def gather(self, index: torch.Tensor, out: torch.Tensor) -> None:
        self.reader.gather(index.numpy(), out=out.numpy())


def _hold_or_stream(images: np.ndarray | ImageReader, shape: tuple[int, ...], max_bytes: float,
                    device: torch.device) -> HeldImages | StreamedImages:
    if isinstance(images, np.ndarray):
        return HeldImages(images, device)
    if images.nbytes <= max_bytes:
        return HeldImages(images.load()[0], device)
    return StreamedImages(images, shape)


@dataclass
class FitResult:
    """What ``fit`` returns on rank 0 (other ranks get None)."""

    G_ema: torch.nn.Module  # the chosen snapshot's EMA generator
    spec: GeneratorSpec  # the generator's, as fit was given it
    log_rows: list[dict]
    watch_rows: list[dict]  # the in-training evaluations: step, metric, value, std
    previews: list[tuple[int, np.ndarray]]  # (step, uint8 fixed-noise samples) per evaluation
    summary: dict
    device: torch.device
    started_at: float  # time.time() when training began, for the MLflow run


def preview_inputs(spec: GeneratorSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed noise for the samples shown at every evaluation: 8 per class when conditional, else 64
    (the same noise as reports/samples.png)."""
    rows, cols = (spec.num_classes, 8) if spec.conditional else (8, 8)
    z = torch.randn(rows * cols, spec.latent_dim, generator=torch.Generator().manual_seed(seed + 2))
    return z, torch.arange(rows).repeat_interleave(cols) if spec.conditional else None


def fit(g_spec: GeneratorSpec, d_spec: DiscriminatorSpec, cfg: TrainParams, augmentation: str,
        images_u8: np.ndarray | ImageReader, labels_all: np.ndarray, checkpoint_root: Path,
        before_training: Callable[[], None] = lambda: None, score: Scorer | None = None,
        rescore: Scorer | None = None, report: Callable[[int, float, float], str] | None = None) -> FitResult | None:
    """Train the networks of ``g_spec`` and ``d_spec`` on uint8 images (N, C, H, W) with int labels and
    return the EMA generator and its log. ``augmentation`` is train.augment resolved (none,
    diffaugment or ada). The images are an array, or a reader of a prepared split: held in memory up
    to train.in_memory_max_mb, read from the shards a batch at a time beyond (the same batches either way).

    Under torchrun every process runs this function: DDP keeps the networks in sync, each rank
    draws its own share of every batch and its own noise, and only rank 0 writes checkpoints and
    gets a result; ``before_training`` runs on rank 0 once the processes are up (the tracking check).

    ``score`` (train.eval_every > 0) scores the EMA generator every eval_every steps and at the last
    (on rank 0; ganops.training.watch keeps the best snapshots and says when to stop), and
    ``rescore`` re-scores the kept ones at the end: the result's generator is the chosen snapshot.
    Non-finite losses always stop the run, which then ships its best snapshot. ``report`` (a sweep's
    trial, ganops.trial) is handed each evaluation's step, value and std and returns why the
    run must stop now, or "": a run it stops ships its last snapshot without re-scoring (a pruned trial
    is not evaluated further).
    """
    requested = resolve_device(cfg.device, "train.device")
    ctx = distributed.init(requested.type)
    on_cuda = requested.type == "cuda"
    device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device()) if on_cuda else requested
    if on_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv kernels
    if cfg.batch_size % ctx.world_size:
        raise GanopsError(f"train.batch_size={cfg.batch_size} must divide evenly over {ctx.world_size} processes")
    local_batch = cfg.batch_size // ctx.world_size
    if ctx.is_main:
        before_training()
    run_started_at = time.time()

    # --- networks, optimisers, state -------------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    memory_format = torch.channels_last  # the faster conv layout for both cuDNN and oneDNN (CPU)
    G_raw = build_generator(g_spec).to(device, memory_format=memory_format)
    D_raw = build_discriminator(d_spec).to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G_raw).eval().requires_grad_(False)
    # One CUDA graph per training step: a single process on a GPU, eager networks (torch.compile
    # brings its own graphs); the optimisers must then keep their step counts on the device.
    cuda_graph = on_cuda and cfg.cuda_graphs and not ctx.enabled and not cfg.compile
    adam = {"fused": True, "capturable": cuda_graph} if on_cuda else {"foreach": True}
    opt_g = torch.optim.Adam(G_raw.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), **adam)
    opt_d = torch.optim.Adam(D_raw.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), **adam)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 7919 * ctx.rank)  # per-rank noise
    shape = (g_spec.channels, g_spec.resolution, g_spec.resolution)
    images = _hold_or_stream(images_u8, shape, cfg.in_memory_max_mb * 2**20, device)  # uint8; scaled per batch
    labels = torch.from_numpy(labels_all).to(images.device)
    stream = BatchStream(len(labels_all), local_batch, cfg.seed, ctx.rank, ctx.world_size, device=images.device)

    watching = score is not None and cfg.eval_every > 0
    fingerprint = _fingerprint(g_spec, d_spec, cfg, augmentation, ctx.world_size, score.name if watching else None)
    # Augmentation's probability p, on the device: fixed at 1 for DiffAugment, steered by ADA.
    ada = AdaController(cfg.ada_target, cfg.ada_kimg, cfg.ada_interval, cfg.batch_size, device) if augmentation == "ada" else None
    augment_p = ada.p if ada else torch.ones((), device=device) if augmentation == "diffaugment" else None
    watch = Watch(score.name, cfg.keep_best, cfg.early_stop_patience, cfg.diverge_factor, cfg.noise_z) if watching else None
    state = TrainingState(generator=G_raw, discriminator=D_raw, generator_ema=G_ema, opt_g=opt_g, opt_d=opt_d,
                          stream=stream, window=torch.zeros(len(STEP_STATS), device=device), ada=ada, noise=noise,
                          watch=watch)
    checkpoints = run_folder(checkpoint_root, fingerprint)
    if ctx.is_main:
        prune_stale(checkpoint_root, checkpoints, cfg.checkpoint_retention_days)
        remove_partial_writes(checkpoints)
    resumed = _resumable(ctx, checkpoints, fingerprint, cfg.steps)
    if resumed is not None:
        state.restore(resumed, ctx.rank)
        if ctx.is_main:
            log.info("resuming from checkpoint at step %d", state.step)
    start_step, elapsed_before = state.step, state.elapsed_s

    # DDP wraps the networks for the steps whose gradients must be averaged over ranks; the raw
    # modules serve the passes that need no sync (penalties, the generator step through a frozen D).
    G, D = G_raw, D_raw
    if ctx.enabled:
        device_ids = [device.index] if on_cuda else None
        # Buffers are averaged after every step instead of broadcast from rank 0 (see below).
        G = DistributedDataParallel(G_raw, device_ids=device_ids, broadcast_buffers=False)
        D = DistributedDataParallel(D_raw, device_ids=device_ids, broadcast_buffers=False)
    D_frozen = D_raw
    if cfg.compile:
        G, D, D_frozen = torch.compile(G), torch.compile(D), torch.compile(D_raw)

    training_step = TrainStep(cfg=cfg, G=G, D=D, D_raw=D_raw, D_frozen=D_frozen, opt_g=opt_g, opt_d=opt_d,
                              images=images, labels=labels if g_spec.conditional else None, batch_size=local_batch,
                              latent_dim=g_spec.latent_dim, device=device, memory_format=memory_format,
                              cuda_graph=cuda_graph, augment_p=augment_p)
    images_from = "shards" if isinstance(images, StreamedImages) else "memory"
    if ctx.is_main:
        log.info("training on %s x %d, images %s%s%s", device, ctx.world_size,
                 "read from their shards per batch" if images_from == "shards" else f"held in {images.device.type} memory",
                 ", one CUDA graph per step" if cuda_graph else "",
                 f", augmentation {augmentation}" + (" (train.augment: auto)" if cfg.augment == "auto" else "")
                 if augmentation != "none" else "")

    # --- the loop ----------------------------------------------------------------------------------
    preview = preview_inputs(g_spec, cfg.seed)
    stopped_by_report = ""
    started = time.perf_counter()
    last_log_time, last_log_step = started, start_step
    progress = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", mininterval=1.0,
                    dynamic_ncols=True, disable=not ctx.is_main or None)
    G_raw.train()
    D_raw.train()
    for step in range(start_step, cfg.steps):
        if state.stopped:  # a resumed run that had stopped early
            break
        training_step.fill(stream.next, noise)
        stats = training_step.run()
        distributed.average_buffers(ctx, G_raw, D_raw)  # batch-norm statistics from every rank's share
        update_ema(G_raw, G_ema, ema_decay(cfg.ema_decay, step - cfg.ema_start))
        done = step + 1
        if ada:
            ada.observe(stats[REAL_SIGN], done, ctx.all_reduce_mean)

        # Bookkeeping stays on the device; it is read (a host sync) only every log_every steps.
        state.step = done
        state.window += stats
        state.window_steps += 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.all_reduce_mean(state.window)  # the logged losses are averages over all ranks
            now = time.perf_counter()
            means = (state.window / state.window_steps).tolist()
            row = dict(zip(STEP_STATS, (round(v, 6) for v in means)))
            row["augment_p"] = round(augment_p.item(), 6) if augment_p is not None else 0.0
            row.update(step=done, images_per_s=round((done - last_log_step) * cfg.batch_size / (now - last_log_time), 2),
                       wall_time_s=round(elapsed_before + now - started, 3))
            state.log.append(row)
            progress.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", img_s=f"{row['images_per_s']:.0f}")
            state.window.zero_()
            state.window_steps, last_log_time, last_log_step = 0, now, done
            if not all(math.isfinite(value) for value in means):
                state.stopped = f"step {done}: non-finite losses ({', '.join(f'{k} {v}' for k, v in row.items())})"
        if watch is not None and not state.stopped and (done % cfg.eval_every == 0 or done == cfg.steps):
            reason = ""
            if ctx.is_main:
                scored_at = time.perf_counter()
                value, std = score(G_ema)
                samples = to_uint8(G_ema(preview[0].to(device), preview[1].to(device) if preview[1] is not None
                                         else None)).cpu()
                reason = watch.observe(done, value, std, lambda: cpu_weights(G_ema), samples)
                state.watch_s += time.perf_counter() - scored_at
                log.info("step %d: %s %.4f (std %.4f)", done, watch.metric, value, std)
                if not reason and report is not None:
                    reason = stopped_by_report = report(done, value, std)
            state.stopped = ctx.all_gather(reason)[0]  # every rank stops where rank 0 does
        if state.stopped and ctx.is_main:
            log.warning("training stops early, at %s", state.stopped)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or state.stopped:
            noise_per_rank = ctx.all_gather(noise.get_state().cpu())
            if ctx.enabled:  # at every checkpoint (one process agrees with itself)
                digest = _check_ranks_agree(ctx, done, G_raw, D_raw, G_ema)
                if ctx.is_main:
                    log.info("step %d: all %d ranks hold identical weights (%s)", done, ctx.world_size, digest[:16])
            if ctx.is_main:
                state.elapsed_s = elapsed_before + time.perf_counter() - started
                save_checkpoint(checkpoints, done, state.capture(fingerprint, noise_per_rank), cfg.keep_checkpoints)
            ctx.barrier()
        progress.update(1)
        if state.stopped:
            break
    progress.close()
    wall_time = elapsed_before + time.perf_counter() - started

    # --- every rank must hold the same networks ------------------------------------------------------
    digest = _check_ranks_agree(ctx, state.step, G_raw, D_raw, G_ema)
    if not ctx.is_main:
        ctx.barrier()
        distributed.shutdown()
        return None

    # --- the snapshot to ship (rank 0) ---------------------------------------------------------------
    chosen_at = time.perf_counter()
    snapshot = copy.deepcopy(G_ema)

    def load(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        snapshot.load_state_dict(weights)
        return snapshot

    if stopped_by_report and finite_weights(last := cpu_weights(G_ema)):
        choice = Choice(state.step, last, "the last step: the run was stopped by its report (not re-scored)", [])
    else:
        choice = choose_snapshot(watch, state.step, cpu_weights(G_ema), rescore, load)
    shipped = load(choice.weights)
    choose_s = time.perf_counter() - chosen_at
    log.info("shipping the snapshot of %s", choice.reason)

    # --- the result (rank 0) -------------------------------------------------------------------------
    final = state.log[-1] if state.log else {}
    training_s = wall_time - state.watch_s
    summary = {
        "steps": cfg.steps,
        "steps_done": state.step,
        "wall_time_s": round(wall_time, 3),  # the loop's, in-training evaluations included
        "images_per_s": round(state.step * cfg.batch_size / training_s, 2) if training_s > 0 else 0.0,
        "resumed_from_step": start_step,
        "world_size": ctx.world_size,
        "weights_sha256": digest[:16],  # every network at the last step, equal on every rank
        "generator_sha256": distributed.weights_digest(shipped)[:16],  # the shipped EMA generator
        "images_from": images_from,
        "augment": augmentation,
        "augment_p": round(augment_p.item(), 6) if augment_p is not None else 0.0,
        **{key: final[key] for key in ("loss_d", "loss_g", "d_real", "d_fake") if key in final},
        "stopped_early": state.stopped or None,
        "chosen_step": choice.step,
        "chosen_because": choice.reason,
    }
    if watch is not None:
        summary.update({"watch_metric": watch.metric, "watch_s": round(state.watch_s, 3), "choose_s": round(choose_s, 3),
                        "rescore_metric": rescore.name if rescore is not None else None,
                        "candidates": choice.candidates})
    log.info("trained %d steps in %.1f s on %s x %d; weights %s on every rank", state.step, wall_time, device,
             ctx.world_size, digest[:16])
    ctx.barrier()
    distributed.shutdown()
    previews = [(e["step"], e["samples"].numpy()) for e in watch.history] if watch is not None else []
    return FitResult(G_ema=shipped, spec=g_spec, log_rows=state.log, watch_rows=watch.rows() if watch else [],
                     previews=previews, summary=summary, device=device, started_at=run_started_at)
