"""Atomic file and folder writes: a stage that fails leaves the previous outputs as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def update_from_file(digest, path: Path) -> None:
    """Feed a file's bytes to a hash, 1 MiB at a time (memory does not grow with the file)."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    update_from_file(digest, path)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions instead.
_UMASK = _current_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path, payload: Any) -> None:
    """``payload`` as strict JSON: a NaN or an infinity anywhere in it is an error naming where, and
    nothing is written (JSON has no such numbers; json.dumps would write the bare token NaN)."""
    where = first_non_finite(payload)
    if where is not None:
        from ganops import GanopsError

        raise GanopsError(f"{target}: {where} is not a finite number; nothing written")
    write_bytes_atomic(target, (json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def first_non_finite(value: Any, where: str = "the value") -> str | None:
    """Where in a JSON-like value (dicts, lists, numbers) the first NaN or infinity is, or None."""
    if isinstance(value, float):
        return where if value != value or value in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        items = ((f"{where}[{key!r}]" if where != "the value" else repr(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for path, item in items if (found := first_non_finite(item, path)) is not None), None)


def _fsync_tree(folder: Path) -> None:
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(Path(parent))


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it takes ``target``'s place.

    The old folder is moved aside before the new one is renamed in, and removed only afterwards,
    so at every instant one complete version exists on disk.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    backup = target.parent / f".{target.name}.old"
    if backup.exists() and not target.exists():  # a run killed between the two renames below
        os.replace(backup, target)
    try:
        yield staging
        os.chmod(staging, _DIR_MODE)
        _fsync_tree(staging)  # what was written inside by any means is on disk before the rename
        shutil.rmtree(backup, ignore_errors=True)
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
