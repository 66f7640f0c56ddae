"""The training loop, read top to bottom: ``fit`` trains a generator and discriminator from their
specs on uint8 images and returns the chosen EMA generator with its log, in three parts:
``set_up`` (device and processes, seeds, networks and optimisers, data held or streamed, fingerprint
and resume, the step) returns a ``Run``; ``train`` loops, each step followed by its named sections
(log a window, watch and report, checkpoint); ``finish`` chooses the snapshot to ship and returns a
typed ``TrainSummary``. Checkpoints in a folder of their own per setup let a killed run pick up where
it stopped and end with the same weights. Files, params and MLflow are the train stage's
(ganops.stages.train).
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
    read_checkpoint,
    remove_partial_writes,
    run_folder,
    save_checkpoint,
)
from ganops.training.ema import ema_decay, update_ema
from ganops.training.report import FINAL_STATS, STEP_STATS, Candidate, TrainSummary
from ganops.training.step import MEMORY_FORMAT, REAL_SIGN, Networks, TrainStep
from ganops.training.watch import Choice, Scorer, Watch, choose_snapshot, cpu_weights, finite_weights

log = logging.getLogger(__name__)
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
        resumed = read_checkpoint(Path(path))  # the file rank 0 checked, checked again here
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


def preview_inputs(spec: GeneratorSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed noise for the samples shown at every evaluation: 8 per class when conditional, else 64
    (the same noise as reports/samples.png)."""
    rows, cols = (spec.num_classes, 8) if spec.conditional else (8, 8)
    z = torch.randn(rows * cols, spec.latent_dim, generator=torch.Generator().manual_seed(seed + 2))
    return z, torch.arange(rows).repeat_interleave(cols) if spec.conditional else None


@dataclass(frozen=True)
class TrainingJob:
    """What ``fit`` trains: the networks' specs, the train params, train.augment resolved (none,
    diffaugment or ada), uint8 images (N, C, H, W) — an array, or a reader of a prepared split: held
    in memory up to train.in_memory_max_mb, read from the shards a batch at a time beyond (the same
    batches either way) — with their int labels, and the root of the checkpoint folders."""

    generator: GeneratorSpec
    discriminator: DiscriminatorSpec
    cfg: TrainParams
    augmentation: str
    images: np.ndarray | ImageReader
    labels: np.ndarray
    checkpoints: Path


@dataclass(frozen=True)
class Scoring:
    """How a run is watched. ``score`` (train.eval_every > 0) scores the EMA generator every eval_every
    steps and at the last (on rank 0; ganops.training.watch keeps the best snapshots and says when to
    stop), and ``rescore`` re-scores the kept ones at the end. ``report`` (a sweep's trial,
    ganops.trial) is handed each evaluation's step, value and std and returns why the run must stop
    now, or "": a run it stops ships its last snapshot without re-scoring (a pruned trial is not
    evaluated further)."""

    score: Scorer | None = None
    rescore: Scorer | None = None
    report: Callable[[int, float, float], str] | None = None


@dataclass
class Run:
    """One training run as ``set_up`` leaves it: everything the loop and the finish read."""

    job: TrainingJob
    scoring: Scoring
    ctx: distributed.Dist
    device: torch.device
    G_raw: torch.nn.Module
    D_raw: torch.nn.Module
    G_ema: torch.nn.Module
    state: TrainingState  # what a checkpoint holds: weights, optimisers, batch order, log, watch
    train_step: TrainStep
    ada: AdaController | None
    augment_p: torch.Tensor | None  # on the device: 1 for DiffAugment, ADA's p, None without augmentation
    watch: Watch | None
    fingerprint: str
    checkpoints: Path  # this setup's folder
    images_from: str  # "memory" or "shards"
    preview: tuple[torch.Tensor, torch.Tensor | None]  # the fixed noise (and labels) of every evaluation's samples
    started_at: float  # time.time() when training began, for the MLflow run
    start_step: int = 0
    elapsed_before: float = 0.0  # training time of the runs this one resumed
    started: float = 0.0  # perf_counter() when this process's loop began
    last_log: tuple[float, int] = (0.0, 0)  # (perf_counter, step) of the last log row
    stopped_by_report: str = ""
    wall_time_s: float = 0.0


@dataclass
class FitResult:
    """What ``fit`` returns on rank 0 (other ranks get None)."""

    G_ema: torch.nn.Module  # the chosen snapshot's EMA generator
    spec: GeneratorSpec  # the generator's, as fit was given it
    log_rows: list[dict]
    watch_rows: list[dict]  # the in-training evaluations: step, metric, value, std
    previews: list[tuple[int, np.ndarray]]  # (step, uint8 fixed-noise samples) per evaluation
    summary: TrainSummary
    device: torch.device
    started_at: float  # time.time() when training began, for the MLflow run


def fit(job: TrainingJob, scoring: Scoring = Scoring(), before_training: Callable[[], None] = lambda: None) -> FitResult | None:
    """Train ``job`` and return the chosen EMA generator and its log.

    Under torchrun every process runs this function: DDP keeps the networks in sync, each rank
    draws its own share of every batch and its own noise, and only rank 0 writes checkpoints and
    gets a result; ``before_training`` runs on rank 0 once the processes are up (the tracking check).
    Non-finite losses always stop the run, which then ships its best snapshot."""
    run = set_up(job, scoring, before_training)
    train(run)
    return finish(run)


# --- 1. set-up ------------------------------------------------------------------------------------
def set_up(job: TrainingJob, scoring: Scoring, before_training: Callable[[], None]) -> Run:
    cfg, g_spec = job.cfg, job.generator
    # Device and processes.
    ctx, device = _open_processes(cfg)
    local_batch = cfg.batch_size // ctx.world_size
    if ctx.is_main:
        before_training()
    started_at = time.time()

    # Seeds: the same initial weights on every rank.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # Networks and optimisers. One CUDA graph per training step: a single process on a GPU, eager
    # networks (torch.compile brings its own graphs); the optimisers then keep their step counts on the device.
    G_raw = build_generator(g_spec).to(device, memory_format=MEMORY_FORMAT)
    D_raw = build_discriminator(job.discriminator).to(device, memory_format=MEMORY_FORMAT)
    G_ema = copy.deepcopy(G_raw).eval().requires_grad_(False)
    cuda_graph = device.type == "cuda" and cfg.cuda_graphs and not ctx.enabled and not cfg.compile
    adam = {"fused": True, "capturable": cuda_graph} if device.type == "cuda" else {"foreach": True}
    opt_g = torch.optim.Adam(G_raw.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), **adam)
    opt_d = torch.optim.Adam(D_raw.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), **adam)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 7919 * ctx.rank)  # per-rank noise

    # Training data, held or streamed (uint8; scaled per batch).
    shape = (g_spec.channels, g_spec.resolution, g_spec.resolution)
    images = _hold_or_stream(job.images, shape, cfg.in_memory_max_mb * 2**20, device)
    labels = torch.from_numpy(job.labels).to(images.device)
    stream = BatchStream(len(job.labels), local_batch, cfg.seed, ctx.rank, ctx.world_size, device=images.device)

    # Fingerprint, augmentation, watch, and resume from this setup's newest checkpoint.
    watching = scoring.score is not None and cfg.eval_every > 0
    fingerprint = _fingerprint(g_spec, job.discriminator, cfg, job.augmentation, ctx.world_size,
                               scoring.score.name if watching else None)
    ada = (AdaController(cfg.ada_target, cfg.ada_kimg, cfg.ada_interval, cfg.batch_size, device)
           if job.augmentation == "ada" else None)
    augment_p = ada.p if ada else torch.ones((), device=device) if job.augmentation == "diffaugment" else None
    watch = (Watch(scoring.score.name, cfg.keep_best, cfg.early_stop_patience, cfg.diverge_factor, cfg.noise_z)
             if watching else None)
    state = TrainingState(generator=G_raw, discriminator=D_raw, generator_ema=G_ema, opt_g=opt_g, opt_d=opt_d,
                          stream=stream, window=torch.zeros(len(STEP_STATS), device=device), ada=ada, noise=noise,
                          watch=watch)
    checkpoints = _resume(ctx, state, job, fingerprint)

    # The step, on the networks wrapped for DDP or torch.compile.
    networks = _wrap(ctx, cfg, device, G_raw, D_raw, opt_g, opt_d)
    train_step = TrainStep(cfg, networks, images, labels if g_spec.conditional else None, batch_size=local_batch,
                           latent_dim=g_spec.latent_dim, device=device, cuda_graph=cuda_graph, augment_p=augment_p)
    images_from = "shards" if isinstance(images, StreamedImages) else "memory"
    if ctx.is_main:
        _log_setup(device, ctx.world_size, images, cuda_graph, job.augmentation, cfg.augment)
    return Run(job=job, scoring=scoring, ctx=ctx, device=device, G_raw=G_raw, D_raw=D_raw, G_ema=G_ema, state=state,
               train_step=train_step, ada=ada, augment_p=augment_p, watch=watch, fingerprint=fingerprint,
               checkpoints=checkpoints, images_from=images_from, preview=preview_inputs(g_spec, cfg.seed),
               started_at=started_at, start_step=state.step,
               elapsed_before=state.elapsed_s)


def _open_processes(cfg: TrainParams) -> tuple[distributed.Dist, torch.device]:
    """This process's place among the ranks (one, outside torchrun) and its device."""
    requested = resolve_device(cfg.device, "train.device")
    ctx = distributed.init(requested.type)
    on_cuda = requested.type == "cuda"
    device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device()) if on_cuda else requested
    if on_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest conv kernels
    if cfg.batch_size % ctx.world_size:
        raise GanopsError(f"train.batch_size={cfg.batch_size} must divide evenly over {ctx.world_size} processes")
    return ctx, device


def _resume(ctx: distributed.Dist, state: TrainingState, job: TrainingJob, fingerprint: str) -> Path:
    """This setup's checkpoint folder, tidied by rank 0; ``state`` restored from its newest checkpoint."""
    checkpoints = run_folder(job.checkpoints, fingerprint)
    if ctx.is_main:
        prune_stale(job.checkpoints, checkpoints, job.cfg.checkpoint_retention_days)
        remove_partial_writes(checkpoints)
    resumed = _resumable(ctx, checkpoints, fingerprint, job.cfg.steps)
    if resumed is not None:
        state.restore(resumed, ctx.rank)
        if ctx.is_main:
            log.info("resuming from checkpoint at step %d", state.step)
    return checkpoints


def _wrap(ctx: distributed.Dist, cfg: TrainParams, device: torch.device, G_raw: torch.nn.Module,
          D_raw: torch.nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> Networks:
    """DDP wraps the networks for the passes whose gradients are averaged over ranks; the raw modules
    serve the passes that need no sync (penalties, the generator step through a frozen D)."""
    G, D = G_raw, D_raw
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        # Buffers are averaged after every step instead of broadcast from rank 0 (see train's step).
        G = DistributedDataParallel(G_raw, device_ids=device_ids, broadcast_buffers=False)
        D = DistributedDataParallel(D_raw, device_ids=device_ids, broadcast_buffers=False)
    D_frozen = D_raw
    if cfg.compile:
        G, D, D_frozen = torch.compile(G), torch.compile(D), torch.compile(D_raw)
    return Networks(G, D, D_raw, D_frozen, opt_g, opt_d)


def _log_setup(device: torch.device, world_size: int, images: HeldImages | StreamedImages, cuda_graph: bool,
               augmentation: str, augment: str) -> None:
    log.info("training on %s x %d, images %s%s%s", device, world_size,
             "read from their shards per batch" if isinstance(images, StreamedImages) else f"held in {images.device.type} memory",
             ", one CUDA graph per step" if cuda_graph else "",
             f", augmentation {augmentation}" + (" (train.augment: auto)" if augment == "auto" else "")
             if augmentation != "none" else "")


# --- 2. the loop ----------------------------------------------------------------------------------
def train(run: Run) -> None:
    """Step from where the run starts to train.steps, or until something stops it."""
    cfg, state = run.job.cfg, run.state
    run.started = time.perf_counter()
    run.last_log = (run.started, run.start_step)
    progress = tqdm(total=cfg.steps, initial=run.start_step, desc="train", unit="step", mininterval=1.0,
                    dynamic_ncols=True, disable=not run.ctx.is_main or None)
    run.G_raw.train()
    run.D_raw.train()
    for step in range(run.start_step, cfg.steps):
        if state.stopped:  # a resumed run that had stopped early
            break
        done = _step(run, step)
        if done % cfg.log_every == 0 or done == cfg.steps:
            _log_window(run, done, progress)
        if run.watch is not None and not state.stopped and (done % cfg.eval_every == 0 or done == cfg.steps):
            _watch_and_report(run, done)
        if state.stopped and run.ctx.is_main:
            log.warning("training stops early, at %s", state.stopped)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or state.stopped:
            _checkpoint(run, done)
        progress.update(1)
        if state.stopped:
            break
    progress.close()
    run.wall_time_s = run.elapsed_before + time.perf_counter() - run.started


def _step(run: Run, step: int) -> int:
    """One training step, then the EMA and ADA updates; its stats are summed on the device (read, a
    host sync, only when a window is logged). Returns the steps done."""
    cfg, state = run.job.cfg, run.state
    run.train_step.fill(state.stream.next, state.noise)
    stats = run.train_step.run()
    distributed.average_buffers(run.ctx, run.G_raw, run.D_raw)  # batch-norm statistics from every rank's share
    update_ema(run.G_raw, run.G_ema, ema_decay(cfg.ema_decay, step - cfg.ema_start))
    done = step + 1
    if run.ada:
        run.ada.observe(stats[REAL_SIGN], done, run.ctx.all_reduce_mean)
    state.step = done
    state.window += stats
    state.window_steps += 1
    return done


def _log_window(run: Run, done: int, progress: tqdm) -> None:
    """One row of reports/train_log.csv: the step stats' means over the window, averaged over all
    ranks; non-finite means stop the run."""
    cfg, state = run.job.cfg, run.state
    run.ctx.all_reduce_mean(state.window)
    now = time.perf_counter()
    means = (state.window / state.window_steps).tolist()
    row = dict(zip(STEP_STATS, (round(v, 6) for v in means)))
    row["augment_p"] = round(run.augment_p.item(), 6) if run.augment_p is not None else 0.0
    last_time, last_step = run.last_log
    row.update(step=done, images_per_s=round((done - last_step) * cfg.batch_size / (now - last_time), 2),
               wall_time_s=round(run.elapsed_before + now - run.started, 3))
    state.log.append(row)
    progress.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", img_s=f"{row['images_per_s']:.0f}")
    state.window.zero_()
    state.window_steps, run.last_log = 0, (now, done)
    if not all(math.isfinite(value) for value in means):
        state.stopped = f"step {done}: non-finite losses ({', '.join(f'{k} {v}' for k, v in row.items())})"


def _watch_and_report(run: Run, done: int) -> None:
    """Score the EMA generator (rank 0), let the watch keep it or stop the run, and a sweep's
    pruner stop it; every rank stops where rank 0 does."""
    reason = ""
    if run.ctx.is_main:
        scored_at = time.perf_counter()
        value, std = run.scoring.score(run.G_ema)
        z, y = run.preview
        samples = to_uint8(run.G_ema(z.to(run.device), y.to(run.device) if y is not None else None)).cpu()
        reason = run.watch.observe(done, value, std, lambda: cpu_weights(run.G_ema), samples)
        run.state.watch_s += time.perf_counter() - scored_at
        log.info("step %d: %s %.4f (std %.4f)", done, run.watch.metric, value, std)
        if not reason and run.scoring.report is not None:
            reason = run.stopped_by_report = run.scoring.report(done, value, std)
    run.state.stopped = run.ctx.all_gather(reason)[0]


def _checkpoint(run: Run, done: int) -> None:
    """Every rank's noise state, the ranks' agreement (under DDP), and the checkpoint (rank 0)."""
    ctx = run.ctx
    noise_per_rank = ctx.all_gather(run.state.noise.get_state().cpu())
    if ctx.enabled:  # at every checkpoint (one process agrees with itself)
        digest = _check_ranks_agree(ctx, done, run.G_raw, run.D_raw, run.G_ema)
        if ctx.is_main:
            log.info("step %d: all %d ranks hold identical weights (%s)", done, ctx.world_size, digest[:16])
    if ctx.is_main:
        run.state.elapsed_s = run.elapsed_before + time.perf_counter() - run.started
        save_checkpoint(run.checkpoints, done, run.state.capture(run.fingerprint, noise_per_rank),
                        run.job.cfg.keep_checkpoints)
    ctx.barrier()


# --- 3. finish ------------------------------------------------------------------------------------
def finish(run: Run) -> FitResult | None:
    """Every rank must hold the same networks; rank 0 chooses the snapshot to ship and reports."""
    ctx, state, watch = run.ctx, run.state, run.watch
    digest = _check_ranks_agree(ctx, state.step, run.G_raw, run.D_raw, run.G_ema)
    if not ctx.is_main:
        ctx.barrier()
        distributed.shutdown()
        return None
    chosen_at = time.perf_counter()
    shipped, choice = _choose(run)
    summary = _summary(run, digest, shipped, choice, time.perf_counter() - chosen_at)
    log.info("trained %d steps in %.1f s on %s x %d; weights %s on every rank", state.step, run.wall_time_s,
             run.device, ctx.world_size, digest[:16])
    ctx.barrier()
    distributed.shutdown()
    previews = [(e["step"], e["samples"].numpy()) for e in watch.history] if watch is not None else []
    return FitResult(G_ema=shipped, spec=run.job.generator, log_rows=state.log, watch_rows=watch.rows() if watch else [],
                     previews=previews, summary=summary, device=run.device, started_at=run.started_at)


def _choose(run: Run) -> tuple[torch.nn.Module, Choice]:
    """The snapshot to ship (ganops.training.watch.choose_snapshot), loaded into a copy of the EMA
    generator: the last one when a sweep's report stopped the run."""
    snapshot = copy.deepcopy(run.G_ema)

    def load(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        snapshot.load_state_dict(weights)
        return snapshot

    if run.stopped_by_report and finite_weights(last := cpu_weights(run.G_ema)):
        choice = Choice(run.state.step, last, "the last step: the run was stopped by its report (not re-scored)", [])
    else:
        choice = choose_snapshot(run.watch, run.state.step, cpu_weights(run.G_ema), run.scoring.rescore, load)
    shipped = load(choice.weights)
    log.info("shipping the snapshot of %s", choice.reason)
    return shipped, choice


def _summary(run: Run, digest: str, shipped: torch.nn.Module, choice: Choice, choose_s: float) -> TrainSummary:
    cfg, state, watch = run.job.cfg, run.state, run.watch
    # the last row's stats, or the last finite ones when the run stopped on non-finite losses
    final = next((row for row in reversed(state.log) if all(math.isfinite(row[key]) for key in FINAL_STATS)), {})
    training_s = run.wall_time_s - state.watch_s
    watched = {}
    if watch is not None:
        rescore = run.scoring.rescore
        watched = {"watch_metric": watch.metric, "watch_s": round(state.watch_s, 3), "choose_s": round(choose_s, 3),
                   "rescore_metric": rescore.name if rescore is not None else None,
                   "candidates": [Candidate(**c) for c in choice.candidates]}
    return TrainSummary(
        steps=cfg.steps, steps_done=state.step, wall_time_s=round(run.wall_time_s, 3),
        images_per_s=round(state.step * cfg.batch_size / training_s, 2) if training_s > 0 else 0.0,
        resumed_from_step=run.start_step, world_size=run.ctx.world_size, weights_sha256=digest[:16],
        generator_sha256=distributed.weights_digest(shipped)[:16], images_from=run.images_from,
        augment=run.job.augmentation, augment_p=round(run.augment_p.item(), 6) if run.augment_p is not None else 0.0,
        **{key: final[key] for key in FINAL_STATS if key in final},
        stopped_early=state.stopped or None, chosen_step=choice.step, chosen_because=choice.reason, **watched)
