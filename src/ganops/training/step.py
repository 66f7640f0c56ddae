"""One training step — ``d_steps`` discriminator updates, then one generator update — built so that
the whole step can be captured once as a CUDA graph and replayed.

A DCGAN-sized step launches several hundred small kernels; on a GPU, launching them from Python
takes longer than running them. A replayed CUDA graph launches them all at once. For that the step
reads its inputs (uint8 real batches, labels, noise) from buffers that live as long as the step:
``fill`` writes the next inputs into them (a few kernels, outside the graph) and ``run`` runs the
step — eagerly (CPU, DDP, torch.compile), or on a GPU by replaying the graph captured after a few
eager warm-up steps. Both paths run the same ``_step`` code on the same inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ganops.config import TrainParams
from ganops.pixels import from_uint8
from ganops.training.augment import DRAWS_PER_IMAGE, augment
from ganops.training.losses import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
    r2_penalty,
)
from ganops.training.report import STEP_STATS

MEMORY_FORMAT = torch.channels_last  # the faster conv layout for both cuDNN and oneDNN (CPU)
REAL_SIGN = STEP_STATS.index("real_sign")
# Eager steps before capture: cuDNN picks its algorithms, the optimisers create their state and
# autograd its gradient buffers, all outside the graph (as PyTorch's CUDA-graph notes require).
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Networks:
    """What a step trains with. ``G`` and ``D`` are what the averaged passes call (wrapped by DDP or
    torch.compile when the run asks); ``D_raw`` is the discriminator itself, for the penalties, and
    ``D_frozen`` the one the generator's step goes through; the optimisers update the raw networks."""

    G: Callable
    D: Callable
    D_raw: nn.Module
    D_frozen: Callable
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


class TrainStep:
    def __init__(self, cfg: TrainParams, networks: Networks, images, labels: torch.Tensor | None, *, batch_size: int,
                 latent_dim: int, device: torch.device, cuda_graph: bool, augment_p: torch.Tensor | None = None) -> None:
        """``images``: loop.HeldImages or loop.StreamedImages (.gather(index, out), .device, .shape)."""
        self.cfg, self.G, self.D, self.D_raw, self.D_frozen = cfg, networks.G, networks.D, networks.D_raw, networks.D_frozen
        self.opt_g, self.opt_d = networks.opt_g, networks.opt_d
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.device, self.memory_format = device, MEMORY_FORMAT
        n = cfg.d_steps
        self.real_u8 = [torch.empty((batch_size, *images.shape), dtype=torch.uint8, device=device) for _ in range(n)]
        self.y = [torch.zeros(batch_size, dtype=torch.long, device=device) for _ in range(n)] if labels is not None else None
        self.z = [torch.empty(batch_size, latent_dim, device=device) for _ in range(n)]
        needs_alpha = LOSSES[cfg.loss].penalty_on_interpolates and cfg.gp_weight > 0
        self.alpha = [torch.empty(batch_size, 1, 1, 1, device=device) for _ in range(n)] if needs_alpha else None
        # Augmentation (train.augment): the probability p lives on the device (ADA moves it between
        # replays); the uniforms for real + fake images of each D update, and for the G update, are
        # drawn by fill like the noise.
        self.augment_p = augment_p
        if augment_p is not None:
            self.augment_draws = [torch.empty(2 * batch_size, DRAWS_PER_IMAGE, device=device) for _ in range(n)]
            self.augment_draws_g = torch.empty(batch_size, DRAWS_PER_IMAGE, device=device)
        # Images kept on the host (in pinned memory or in their shards) for a GPU run are gathered
        # into pinned staging buffers and copied asynchronously -- while the GPU still runs the previous
        # step; the event keeps a gather from overwriting a copy in flight.
        self.from_host = images.device != device
        if self.from_host:
            self.staging = [torch.empty(b.shape, dtype=b.dtype).pin_memory() for b in self.real_u8]
            self.copied = torch.cuda.Event()
        # The autocast cache must be off under graph capture (PyTorch's CUDA-graph notes); at one
        # forward per network and region it saved nothing here anyway.
        on_cuda = device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)) if on_cuda else nullcontext
        self.cuda_graph = cuda_graph and on_cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_stats: torch.Tensor | None = None
        self.warmup_left = WARMUP_STEPS

    def fill(self, next_index: Callable[[], torch.Tensor], noise: torch.Generator) -> None:
        """Write the next step's inputs into the step's buffers: per D update a real batch (and its
        labels), then its noise (and WGAN-GP's mixing weights), drawn in that order from ``noise``."""
        if self.from_host:
            self.copied.synchronize()
        for d in range(self.cfg.d_steps):
            index = next_index()
            if self.from_host:
                self.images.gather(index, out=self.staging[d])
                self.real_u8[d].copy_(self.staging[d], non_blocking=True)
            else:
                self.images.gather(index, out=self.real_u8[d])
            if self.y is not None and self.from_host:
                self.y[d].copy_(self.labels[index])
            elif self.y is not None:
                torch.index_select(self.labels, 0, index, out=self.y[d])
            torch.randn(self.z[d].shape, generator=noise, device=self.device, out=self.z[d])
            if self.alpha is not None:
                torch.rand(self.alpha[d].shape, generator=noise, device=self.device, out=self.alpha[d])
            if self.augment_p is not None:
                torch.rand(self.augment_draws[d].shape, generator=noise, device=self.device, out=self.augment_draws[d])
        if self.augment_p is not None:
            torch.rand(self.augment_draws_g.shape, generator=noise, device=self.device, out=self.augment_draws_g)
        if self.from_host:
            self.copied.record()

    def run(self) -> torch.Tensor:
        """One step on the filled inputs. Returns its STEP_STATS as one tensor on the device; under a
        CUDA graph the same tensor every step, so read or add it before the next."""
        if not self.cuda_graph:
            return self._step()
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), warnings.catch_warnings():
                    # capturable optimisers warn when they step uncaptured: here that is the plan
                    warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
                    stats = self._step()
                torch.cuda.current_stream().wait_stream(side)
                return stats
            # Gradients set to None now are allocated inside the graph's memory pool during capture,
            # and every replay writes them at the same addresses.
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):  # records the kernels without running them
                    self.graph_stats = self._step()
            except RuntimeError as error:
                raise RuntimeError(f"capturing the training step as a CUDA graph failed ({error}); "
                                   "set train.cuda_graphs: false to train eagerly") from error
        self.graph.replay()
        return self.graph_stats

    def _step(self) -> torch.Tensor:
        cfg, batch = self.cfg, self.batch_size
        # Discriminator: d_steps updates, real and fake in one forward pass. The last update's fakes
        # keep their graph, so the generator step reuses them (as the DCGAN reference loop does).
        self.D_raw.requires_grad_(True)
        for d in range(cfg.d_steps):
            real = from_uint8(self.real_u8[d]).contiguous(memory_format=self.memory_format)
            y = self.y[d] if self.y is not None else None
            with torch.set_grad_enabled(d == cfg.d_steps - 1), self.autocast():
                fake = self.G(self.z[d], y).float()
            seen = torch.cat([real, fake.detach()])
            if self.augment_p is not None:  # what D sees, real and fake alike
                seen = augment(seen, self.augment_draws[d], self.augment_p).contiguous(memory_format=self.memory_format)
            with self.autocast():
                both = self.D(seen, torch.cat([y, y]) if y is not None else None).float()
            d_real, d_fake = both[:batch], both[batch:]
            loss_d = discriminator_loss(cfg.loss, d_real, d_fake)
            penalty = torch.zeros((), device=self.device)
            if self.alpha is not None:
                critic = lambda x, y=y: self.D_raw(x, y).float()  # noqa: E731
                penalty = penalty + cfg.gp_weight * gradient_penalty(critic, seen[:batch], seen[batch:], self.alpha[d])
            if cfg.r1_gamma > 0:  # the gradient at the real images, through their augmentation (as ADA does)
                real_r1 = real.detach().requires_grad_(True)
                seen_r1 = real_r1 if self.augment_p is None else augment(
                    real_r1, self.augment_draws[d][:batch], self.augment_p).contiguous(memory_format=self.memory_format)
                penalty = penalty + 0.5 * cfg.r1_gamma * r1_penalty(self.D_raw(seen_r1, y).float(), real_r1)
            if cfg.r1_gamma > 0 and LOSSES[cfg.loss].penalty_on_fakes:  # R2: the same, at the generated images
                fake_r2 = fake.detach().requires_grad_(True)
                seen_r2 = fake_r2 if self.augment_p is None else augment(
                    fake_r2, self.augment_draws[d][batch:], self.augment_p).contiguous(memory_format=self.memory_format)
                penalty = penalty + 0.5 * cfg.r1_gamma * r2_penalty(self.D_raw(seen_r2, y).float(), fake_r2)
            self.opt_d.zero_grad(set_to_none=True)
            (loss_d + penalty).backward()
            self.opt_d.step()

        # Generator: the non-saturating / hinge / Wasserstein step through a frozen D.
        self.D_raw.requires_grad_(False)
        if self.augment_p is not None:  # G is judged on augmented images too, the gradient passing through
            fake = augment(fake, self.augment_draws_g, self.augment_p).contiguous(memory_format=self.memory_format)
        with self.autocast():
            if LOSSES[cfg.loss].generator_reads_real:  # rpgan: D's logits on the same pairs, real as D last saw it
                real_seen = seen[:batch].detach()
                both = self.D_frozen(torch.cat([real_seen, fake]), torch.cat([y, y]) if y is not None else None).float()
                loss_g = generator_loss(cfg.loss, both[batch:], both[:batch])
            else:
                loss_g = generator_loss(cfg.loss, self.D_frozen(fake, y).float())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        stats = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": d_real.detach().mean(),
                 "d_fake": d_fake.detach().mean(), "penalty": penalty.detach(), "real_sign": d_real.detach().sign().mean()}
        return torch.stack([stats[name] for name in STEP_STATS])
