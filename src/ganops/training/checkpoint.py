"""Training checkpoints: a run's whole state (TrainingState) written atomically, one file per step.

A checkpoint is loaded with ``torch.load(weights_only=True)``. So it holds tensors and plain
containers, and can never run code. RNG states that are not tensors are converted to tensors.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ganops.io import atomic_path

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def capture_rng_states() -> dict[str, Any]:
    """The global RNGs; the per-rank noise generators are saved beside them (``noise_per_rank``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def restore_rng_states(states: dict[str, Any], noise: torch.Generator, noise_state: torch.Tensor) -> None:
    """Restore the global RNGs, and ``noise`` from this rank's own saved ``noise_state``."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    noise.set_state(noise_state)
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = states["python"]
    random.setstate((py_state["version"], tuple(py_state["state"].tolist()), py_state["gauss"]))


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainingState:
    """A run between two steps: the live objects it trains, and its counters.

    ``capture`` turns it into a checkpoint's dict and ``restore`` reads one back into the same
    objects, field by field: a new piece of state is one new field. An object with ``state_dict``
    is saved through it and loaded in place; a tensor is copied in place; a plain value is replaced.
    The noise generator is the exception: every rank's is saved (``noise_per_rank``), beside the
    global RNGs.
    """

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    generator_ema: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    stream: Stateful  # the batch order (loop.BatchStream)
    window: torch.Tensor  # running sums of the step stats since the last log row
    ada: Stateful | None  # ADA's p, when train.augment is ada
    noise: torch.Generator  # this rank's latents and augmentation draws
    watch: Stateful | None  # the in-training evaluations and kept snapshots (watch.Watch), when watched
    step: int = 0  # steps done
    elapsed_s: float = 0.0  # training time up to ``step``, over all the processes that ran it
    log: list[dict] = field(default_factory=list)  # the rows of reports/train_log.csv so far
    window_steps: int = 0  # steps summed in ``window``
    stopped: str = ""  # why the run stopped before train.steps ("" while it runs)
    watch_s: float = 0.0  # time spent in in-training evaluations, within ``elapsed_s``

    def capture(self, fingerprint: str, noise_per_rank: list[torch.Tensor]) -> dict[str, Any]:
        """The checkpoint's content; ``noise_per_rank``: every rank's noise state, in rank order."""
        state = {name: _saved(getattr(self, name)) for name in self._same_on_every_rank()}
        return {**state, "fingerprint": fingerprint, "world_size": len(noise_per_rank), "rng": capture_rng_states(),
                "noise_per_rank": noise_per_rank}

    def restore(self, checkpoint: dict[str, Any], rank: int) -> None:
        """Put a checkpoint written by ``capture`` back into this state's objects (this rank's noise)."""
        for name in self._same_on_every_rank():
            setattr(self, name, _loaded(getattr(self, name), checkpoint[name]))
        restore_rng_states(checkpoint["rng"], self.noise, checkpoint["noise_per_rank"][rank])

    def _same_on_every_rank(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "noise"]


def _saved(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    return value.state_dict() if hasattr(value, "state_dict") else value


def _loaded(live: Any, saved: Any) -> Any:
    """``saved`` put into ``live`` in place where it can be; what the field then holds."""
    if isinstance(live, torch.optim.Optimizer):
        _load_optimizer(live, saved)
    elif hasattr(live, "load_state_dict"):
        live.load_state_dict(saved)
    elif isinstance(live, torch.Tensor):
        live.copy_(saved)
    else:
        return saved
    return live


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved moments and step counts, kept on the device as this run needs (CUDA graphs or not),
    not as the saving run did."""
    capturable = [group["capturable"] for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, value in zip(optimizer.param_groups, capturable):
        group["capturable"] = value


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as step-NNNNNNNN.pt in one rename, then keep only the newest ``keep`` up to this
    step: later ones are a longer run's of the same setup (train.steps is not in the fingerprint), and
    pruning by step number alone would delete this run's own newest checkpoint instead."""
    target = checkpoint_path(folder, step)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    for _, old in [(s, p) for s, p in list_checkpoints(folder) if s <= step][keep:]:
        old.unlink(missing_ok=True)
    return target


def remove_partial_writes(folder: Path, older_than_s: float = 600.0) -> list[Path]:
    """Temporary checkpoint files that a killed run left half-written (atomic_path's ``.step-*.tmp``);
    only old ones, so a checkpoint another process is writing right now is left alone."""
    cutoff, removed = time.time() - older_than_s, []
    for path in Path(folder).glob(".step-*.tmp") if Path(folder).is_dir() else []:
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
            log.info("removed a checkpoint a killed run left half-written: %s", path)
    return removed


def run_folder(checkpoints: Path, fingerprint: str) -> Path:
    """Each training setup (params, data, code) keeps its checkpoints in a folder of its own, so runs of
    other params — a `dvc exp run` sweep, say — never touch each other's resumable state."""
    return Path(checkpoints) / fingerprint[:16]


def prune_stale(checkpoints: Path, keep: Path, retention_days: float) -> list[Path]:
    """The documented rule: remove other setups' folders whose newest file is older than ``retention_days``
    (0 keeps everything). A run in progress writes a checkpoint at least every checkpoint_every steps."""
    removed: list[Path] = []
    if retention_days <= 0 or not Path(checkpoints).is_dir():
        return removed
    cutoff = time.time() - retention_days * 86400
    for folder in Path(checkpoints).iterdir():
        if not folder.is_dir() or folder == Path(keep):
            continue
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed checkpoints of another setup untouched for over %g days: %s", retention_days, folder)
    return removed


def load_resumable(folder: Path, fingerprint: str, max_step: int) -> dict[str, Any] | None:
    """The newest checkpoint in this setup's folder at or before ``max_step``.

    Later checkpoints (a longer run of the same setup) are skipped, not removed; only an unreadable
    file is set aside."""
    for step, path in list_checkpoints(folder):
        if step > max_step:
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file: set it aside and fall back to an older one
            log.warning("setting aside unreadable checkpoint %s: %s", path, error)
            path.rename(path.with_suffix(".corrupt"))
            continue
        if state.get("fingerprint") != fingerprint:
            continue
        state["path"] = path
        return state
    return None
