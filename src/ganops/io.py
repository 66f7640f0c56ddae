"""Atomic file and folder writes: a stage that fails leaves the previous outputs as they were."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: staging folders are not locked, and none is ever judged dead
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


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


def _staging_names(name: str) -> re.Pattern[str]:
    """What atomic_dir's staging folders for ``name`` are called: mkdtemp's ``.<name>.<8 random>.tmp``."""
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp$")


def _lock_nowait(fd: int) -> bool:
    """Take the exclusive flock on ``fd`` if no process holds it; False when one does (or when this file
    system has no locks, so nobody can tell)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _new_staging(parent: Path, name: str) -> tuple[Path, int | None]:
    """A new, empty staging folder and an open descriptor holding its flock while this process writes it.

    The lock is the writer's liveness: the kernel drops it when the process dies, however it dies
    (SIGKILL, OOM, power loss), and it holds across pid namespaces and reused pids, which a pid in the
    name would not. A cleaner may take a fresh folder's lock in the instant between its creation and
    its locking: then the folder is gone or being removed, and another is made."""
    while True:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
        if fcntl is None:
            return staging, None
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # removed by a cleaner already
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a cleaner holds it: it is removing this folder
            os.close(fd)
            continue
        except OSError:  # no locks on this file system: unlocked, and never judged dead by a cleaner
            os.close(fd)
            return staging, None
        try:
            ours = os.stat(staging).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            ours = False
        if ours:
            return staging, fd
        os.close(fd)


def remove_dead_stagings(target: Path) -> list[Path]:
    """Staging folders of ``target`` whose writer is dead (no process holds their lock: a run killed
    mid-write), and the previous version a run killed just after its swap left (``.<name>.old`` beside
    ``target``). A live writer's staging folder is never touched, however old; where the file system
    has no locks, nothing can be told dead and nothing is removed."""
    target = Path(target)
    parent, removed = target.parent, []
    if not parent.is_dir():
        return removed
    backup = parent / f".{target.name}.old"
    if backup.is_dir() and not backup.is_symlink() and target.exists():  # the swap was done: an old copy
        shutil.rmtree(backup, ignore_errors=True)
        removed.append(backup)
        log.info("removed the previous version of %s a killed run left: %s", target, backup)
    if fcntl is None:
        return removed
    pattern = _staging_names(target.name)
    for entry in parent.iterdir():
        if not pattern.match(entry.name):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # gone already, a symbolic link, or not a folder
            continue
        try:
            if _lock_nowait(fd):  # held until removed: a new writer can't take this folder meanwhile
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
                log.info("removed the staging folder of a dead run (no process holds its lock): %s", entry)
        finally:
            os.close(fd)
    return removed


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it takes ``target``'s place.

    The old folder is moved aside before the new one is renamed in, and removed only afterwards,
    so at every instant one complete version exists on disk. The staging folder is locked (flock)
    while this process writes it; each writer first removes the staging folders of ``target`` whose
    writers died (``remove_dead_stagings``), as training removes half-written checkpoints.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = target.parent / f".{target.name}.old"
    if backup.exists() and not target.exists():  # a run killed between the two renames below
        os.replace(backup, target)
    remove_dead_stagings(target)
    staging, lock = _new_staging(target.parent, target.name)
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
        if lock is not None:
            os.close(lock)
