"""Multi-process training on PyTorch's own engine: torchrun launches, DistributedDataParallel syncs.

`ganops train` under torchrun (WORLD_SIZE set) joins the process group: NCCL on GPUs, gloo on CPUs.
With train.nproc > 1 and no torchrun around it, `ganops train` re-launches itself under torchrun, so
the DVC stage's command stays `ganops train`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganops import GanopsError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> None:
        """In place: the mean of ``tensor`` over the ranks."""
        if self.enabled:
            dist.all_reduce(tensor)
            tensor /= self.world_size

    def all_gather(self, value: object) -> list[object]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> Dist:
    """Join the process group torchrun set up (a no-op for a single process)."""
    if not under_torchrun():
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    ctx = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cpu":
        # N processes on the same cores: split the threads instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))))
    return ctx


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `ganops <argv>` as ``nproc`` processes on this machine through torchrun; returns its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ganops.cli", *argv]
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        raise GanopsError("distributed training interrupted") from None


@torch.no_grad()
def average_buffers(ctx: Dist, *modules: torch.nn.Module) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks in one all-reduce:
    each rank updated them from its own share of the batch, and all ranks must end identical."""
    if not ctx.enabled:
        return
    buffers = [b for module in modules for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()


def weights_digest(*modules: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, by name, as float32 bytes: equal on all ranks when DDP
    kept them in sync (the first 16 hex digits are reports/train.json's weights_sha256)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
