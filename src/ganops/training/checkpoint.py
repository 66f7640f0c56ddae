"""Training checkpoints: a run's whole state (TrainingState) written atomically, one file per step.

A checkpoint is loaded with ``torch.load(weights_only=True)``. So it holds tensors and plain
containers, and can never run code. RNG states that are not tensors are converted to tensors.

Each step-NNNNNNNN.pt has its sha256 beside it (step-NNNNNNNN.pt.sha256, in ``sha256sum`` format),
recorded when it is saved and checked before it is loaded: a file damaged on disk, even one whose zip
and tensors still load, is set aside (step-NNNNNNNN.corrupt) with a warning naming it and why, and
the run falls back to an older checkpoint, or says that it starts at step 0.
"""

from __future__ import annotations

import hashlib
import io
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

from ganops import GanopsError
from ganops.io import atomic_path, file_sha256, write_bytes_atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_SET_ASIDE = re.compile(r"^step-(\d{8})\.corrupt$")
_DIGEST = re.compile(r"^step-(\d{8})\.(pt|corrupt)\.sha256$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def digest_path(checkpoint: Path) -> Path:
    """Where a checkpoint's sha256 is recorded: beside it, its name plus ``.sha256``."""
    return Path(checkpoint).with_name(Path(checkpoint).name + ".sha256")


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
    pruning by step number alone would delete this run's own newest checkpoint instead.

    The file's sha256 is written (step-NNNNNNNN.pt.sha256, its own atomic write) before the checkpoint
    is renamed into place: a run killed between the two leaves a digest without its checkpoint, never
    a checkpoint without its digest, so every checkpoint on disk can be checked. Set-aside files
    (``.corrupt``) and stray digests go by the same rule as the checkpoints (``_prune``)."""
    target = checkpoint_path(folder, step)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
        write_bytes_atomic(digest_path(target), f"{file_sha256(tmp)}  {target.name}\n".encode())
    _prune(Path(folder), step, keep)
    return target


def _prune(folder: Path, step: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step`` (with their digests). A set-aside file, or a
    digest whose checkpoint is gone, goes once ``keep`` checkpoints newer than its step are kept: the
    evidence of a damaged file lives as long as a checkpoint of its step would have."""
    ours = [(s, p) for s, p in list_checkpoints(folder) if s <= step]
    for _, old in ours[keep:]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    kept = [s for s, _ in ours[:keep]]
    if len(kept) < keep:
        return
    for path in folder.iterdir():
        match = _SET_ASIDE.match(path.name) or _DIGEST.match(path.name)
        if match and int(match.group(1)) < kept[-1] and not (path.name.endswith(".pt.sha256") and
                                                            path.with_suffix("").exists()):
            path.unlink(missing_ok=True)
            log.info("pruned with the checkpoints older than step %d: %s", kept[-1], path)


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


class DamagedCheckpoint(GanopsError):
    """A checkpoint that must not be resumed; the message says why."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's content, once its bytes match the sha256 recorded when it was saved; the bytes
    checked are the bytes loaded (read once). DamagedCheckpoint saying why otherwise."""
    path = Path(path)
    sidecar = digest_path(path)
    try:
        recorded = sidecar.read_text().split()
    except FileNotFoundError:
        raise DamagedCheckpoint(f"no recorded sha256 ({sidecar.name} is missing)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedCheckpoint(f"its recorded sha256 can't be read ({sidecar.name}: {error})") from None
    if len(recorded) != 2 or not _HEX64.match(recorded[0]) or recorded[1] != path.name:
        raise DamagedCheckpoint(f"its recorded sha256 is malformed ({sidecar.name} is not '<sha256>  {path.name}')")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded[0]:
        raise DamagedCheckpoint(f"sha256 mismatch: the file's is {actual[:16]}..., {sidecar.name} recorded "
                                f"{recorded[0][:16]}... when it was saved (damaged on disk)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- its digest matches: written damaged, or by other code
        raise DamagedCheckpoint(f"unreadable ({type(error).__name__}: {str(error)[:300]})") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"not a checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _set_aside(path: Path) -> Path:
    """step-N.pt -> step-N.corrupt (and its digest beside it), kept for inspection until pruned."""
    aside = path.with_suffix(".corrupt")
    path.rename(aside)
    if digest_path(path).exists():
        digest_path(path).rename(digest_path(aside))
    return aside


def load_resumable(folder: Path, fingerprint: str, max_step: int) -> dict[str, Any] | None:
    """The newest checkpoint in this setup's folder at or before ``max_step`` whose sha256 matches.

    Later checkpoints (a longer run of the same setup) are skipped, not removed; a damaged file (its
    sha256 not the one recorded, unreadable) is set aside with a warning naming it and why, and the
    next older one is tried. When none is resumed, the log says the run starts at step 0, and why."""
    set_aside: list[str] = []
    later = other = 0
    for step, path in list_checkpoints(folder):
        if step > max_step:
            later += 1
            continue
        try:
            state = read_checkpoint(path)
        except DamagedCheckpoint as reason:  # set it aside and fall back to an older one
            aside = _set_aside(path)
            log.warning("setting aside checkpoint %s: %s (moved to %s)", path, reason, aside.name)
            set_aside.append(path.name)
            continue
        if state.get("fingerprint") != fingerprint:
            other += 1
            continue
        state["path"] = path
        return state
    _log_fresh_start(Path(folder), set_aside, later, other, max_step)
    return None


def _log_fresh_start(folder: Path, set_aside: list[str], later: int, other: int, max_step: int) -> None:
    why = []
    if set_aside:
        why.append(f"{'all ' if not other else ''}{len(set_aside)} set aside as damaged: {', '.join(set_aside)}")
    if other:
        why.append(f"{other} of another setup")
    if later:
        why.append(f"{later} past train.steps={max_step} (a longer run's, kept)")
    if set_aside:
        log.warning("no usable checkpoint in %s: training starts at step 0 (%s)", folder, "; ".join(why))
    else:
        log.info("no checkpoint to resume in %s: training starts at step 0 (%s)", folder,
                 "; ".join(why) or "none found")
