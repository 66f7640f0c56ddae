"""Atomic folder writes (issue 37, item 8): the staging folders a killed run leaves are removed when the
next writer of the same folder starts; a live writer's are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny
from ganops.io import atomic_dir

# A writer of ``target`` that stops inside its staging folder, half written, until told to finish.
WRITER = """
import sys
from pathlib import Path

import pytest
from ganops.io import atomic_dir

with atomic_dir(Path(sys.argv[1])) as staging:
    (staging / "half.bin").write_bytes(bytes(4096))
    print(staging, flush=True)
    sys.stdin.readline()
    (staging / "who").write_text(sys.argv[2])
"""


def start_writer(target: Path, who: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), who], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    staging = Path(process.stdout.readline().strip())
    assert staging.parent == target.parent and (staging / "half.bin").is_file(), staging
    return process, staging


def killed_writer(target: Path) -> Path:
    """The staging folder a run killed mid-write leaves (SIGKILL: no cleanup of any kind runs)."""
    process, staging = start_writer(target, "killed")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL and staging.is_dir()
    return staging


@pytest.mark.system
def test_a_killed_writers_staging_folder_is_removed_at_the_next_start_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = killed_writer(target)
    live, live_staging = start_writer(target, "live")
    try:
        old = 1_000_000_000  # ages say nothing: an old staging folder of a live writer is kept too
        os.utime(live_staging, (old, old))
        with atomic_dir(target) as staging:
            assert not dead.exists()  # removed when this writer started
            assert live_staging.is_dir()
            (staging / "who").write_text("next")
        assert (target / "who").read_text() == "next"
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.wait(timeout=30) == 0  # the live writer finished, its folder intact
        assert (target / "who").read_text() == "live"
    finally:
        live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_old_copy_a_run_killed_after_its_swap_leaves_is_removed(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        (staging / "who").write_text("first")
    old = tmp_path / ".out.old"  # a run killed between renaming its staging in and removing the old copy
    old.mkdir()
    (old / "who").write_text("older")
    with atomic_dir(target) as staging:
        assert not old.exists()
        (staging / "who").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "who").read_text() == "second"


@pytest.mark.system
def test_prepare_removes_the_staging_folder_a_killed_prepare_left(tmp_path):
    from ganops.stages.prepare import prepare

    dead = killed_writer(tmp_path / "data" / "prepared")
    prepare(tiny(), tmp_path)
    assert not dead.exists() and [p.name for p in (tmp_path / "data").iterdir()] == ["prepared"]
