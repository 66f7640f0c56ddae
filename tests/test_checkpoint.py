"""Checkpoint integrity (issue 37, item 3): each file's sha256 recorded when saved and checked when
loaded; a damaged file set aside with a warning naming it and why; a run with nothing usable says it
starts at step 0; set-aside files pruned with the checkpoints."""

from __future__ import annotations

import logging
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from ganops.training.checkpoint import (
    digest_path,
    list_checkpoints,
    load_resumable,
    read_checkpoint,
    save_checkpoint,
)

LOGGER = "ganops.training.checkpoint"


def state(step: int, fingerprint: str = "setup") -> dict:
    """A checkpoint-like dict: a few tensors (a generator's weights) and plain values."""
    rng = torch.Generator().manual_seed(step)
    return {"generator": {"conv.weight": torch.randn(64, 64, generator=rng), "conv.bias": torch.randn(64, generator=rng)},
            "step": step, "fingerprint": fingerprint, "log": [{"step": step, "loss": 0.5}]}


def flip_inside_a_tensor(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of the checkpoint's largest tensor, then fix that zip entry's
    CRC-32 in its local header and in the central directory: the zip stays valid and the tensors load;
    only the values are wrong (bit rot, a bad disk block, a tampered file)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start_dir = archive.start_dir
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= 4 * count
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    body = info.header_offset + 30 + name_len + extra_len
    middle = body + info.file_size // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    crc = zlib.crc32(data[body : body + info.file_size]) & 0xFFFFFFFF
    struct.pack_into("<I", data, info.header_offset + 14, crc)
    offset = start_dir  # the central directory: find this entry's record
    while struct.unpack_from("<I", data, offset)[0] == 0x02014B50:
        n, e, c = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46 : offset + 46 + n].decode() == info.filename:
            struct.pack_into("<I", data, offset + 16, crc)
            break
        offset += 46 + n + e + c
    else:
        raise AssertionError("central directory record not found")
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every entry's CRC checks out


def test_every_checkpoint_has_its_sha256_beside_it(tmp_path):
    path = save_checkpoint(tmp_path, 10, state(10), keep=2)
    recorded = digest_path(path).read_text()
    import hashlib

    assert recorded == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"  # sha256sum -c reads it
    assert torch.equal(read_checkpoint(path)["generator"]["conv.weight"], state(10)["generator"]["conv.weight"])


def test_a_loadable_but_damaged_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path, caplog):
    """64 bytes flipped inside a tensor of the newest checkpoint, the zip intact: torch loads it (the issue's
    reproduction resumed it silently); its sha256 no longer matches, so it is set aside, named with the
    reason, and the run resumes from the checkpoint before."""
    save_checkpoint(tmp_path, 10, state(10), keep=2)
    newest = save_checkpoint(tmp_path, 20, state(20), keep=2)
    flip_inside_a_tensor(newest)
    damaged = torch.load(newest, weights_only=True)  # still loads: only its values are wrong
    assert not torch.equal(damaged["generator"]["conv.weight"], state(20)["generator"]["conv.weight"])

    with caplog.at_level(logging.INFO, logger=LOGGER):
        resumed = load_resumable(tmp_path, "setup", max_step=20)
    assert resumed is not None and resumed["step"] == 10 and resumed["path"].name == "step-00000010.pt"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(newest) in warning.getMessage() and "sha256 mismatch" in warning.getMessage()
    assert not newest.exists() and (tmp_path / "step-00000020.corrupt").exists()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10]
    assert not [r for r in caplog.records if "starts at step 0" in r.getMessage()]


@pytest.mark.parametrize("damage", ["truncated", "digest missing"])
def test_with_every_checkpoint_damaged_the_run_says_it_starts_at_step_0(tmp_path, caplog, damage):
    paths = [save_checkpoint(tmp_path, step, state(step), keep=2) for step in (10, 20)]
    for path in paths:
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:  # what a checkpoint without its recorded digest would be: never trusted unchecked
            digest_path(path).unlink()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert load_resumable(tmp_path, "setup", max_step=20) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    reason = "sha256 mismatch" if damage == "truncated" else "no recorded sha256"
    assert all(reason in line for line in warnings[:2])
    assert str(paths[1]) in warnings[0] and str(paths[0]) in warnings[1]
    assert "training starts at step 0" in warnings[2] and "all 2 set aside as damaged" in warnings[2]
    assert "step-00000010.pt" in warnings[2] and "step-00000020.pt" in warnings[2]


def test_a_run_with_no_checkpoint_says_it_starts_at_step_0(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert load_resumable(tmp_path / "fresh", "setup", max_step=20) is None
    (line,) = [r for r in caplog.records if "starts at step 0" in r.getMessage()]
    assert line.levelno == logging.INFO and "none found" in line.getMessage()
    save_checkpoint(tmp_path, 30, state(30), keep=2)  # a longer run's: kept, not resumed by a shorter one
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert load_resumable(tmp_path, "setup", max_step=20) is None
    assert "1 past train.steps=20" in caplog.records[-1].getMessage()


def test_set_aside_files_are_pruned_with_the_checkpoints(tmp_path):
    """keep=2: a set-aside file goes when a checkpoint of its step would, once two newer ones are kept."""
    for step in (10, 20):
        save_checkpoint(tmp_path, step, state(step), keep=2)
    for step in (10, 20):
        (tmp_path / f"step-{step:08d}.pt").write_bytes(b"truncated")
    assert load_resumable(tmp_path, "setup", max_step=20) is None  # both set aside
    aside = sorted(p.name for p in tmp_path.iterdir())
    assert aside == ["step-00000010.corrupt", "step-00000010.corrupt.sha256",
                     "step-00000020.corrupt", "step-00000020.corrupt.sha256"]
    (tmp_path / "step-00000005.pt.sha256").write_text("0" * 64 + "  step-00000005.pt\n")  # its checkpoint never landed

    save_checkpoint(tmp_path, 10, state(10), keep=2)  # the restarted run
    save_checkpoint(tmp_path, 20, state(20), keep=2)
    assert len(list(tmp_path.glob("*.corrupt"))) == 2  # not yet: two checkpoints newer than them are not kept
    save_checkpoint(tmp_path, 30, state(30), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000020.corrupt", "step-00000020.corrupt.sha256",
        "step-00000020.pt", "step-00000020.pt.sha256", "step-00000030.pt", "step-00000030.pt.sha256"]
    save_checkpoint(tmp_path, 40, state(40), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000030.pt", "step-00000030.pt.sha256", "step-00000040.pt", "step-00000040.pt.sha256"]
    assert load_resumable(tmp_path, "setup", max_step=40)["step"] == 40


@pytest.mark.stage
def test_a_run_whose_newest_checkpoint_is_damaged_ends_with_the_uninterrupted_weights(tmp_path, caplog, tiny_built):
    """The issue's reproduction through the train stage: the newest checkpoint damaged inside a tensor
    (the zip intact). The rerun sets it aside, resumes the one before, and ends bit-identical to the
    run that was never damaged (the shared tiny project's, trained with the same params)."""
    from safetensors.torch import load_file

    from conftest import copy_project, tiny
    from ganops.stages.train import train

    copy_project(tiny_built, tmp_path)
    straight = load_file(tmp_path / "models" / "generator.safetensors")
    (folder,) = (tmp_path / "models" / "checkpoints").iterdir()
    (_, newest), _ = list_checkpoints(folder)
    flip_inside_a_tensor(newest)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert train(tiny(), tmp_path)["resumed_from_step"] == 10
    assert any(str(newest) in r.getMessage() and "sha256 mismatch" in r.getMessage() for r in caplog.records)
    again = load_file(tmp_path / "models" / "generator.safetensors")
    assert again.keys() == straight.keys() and all(torch.equal(again[k], straight[k]) for k in again)
