"""Training checkpoints: networks, optimisers, RNG states and the log so far, written atomically.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint can hold tensors and plain
containers but can never run code. RNG states that are not tensors are converted to tensors.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

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


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as step-NNNNNNNN.pt in one rename, then keep only the newest ``keep``."""
    target = checkpoint_path(folder, step)
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
    return target


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
