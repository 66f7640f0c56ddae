"""The prepared format's storage: each split is a sequence of fixed-size shards.

A shard is a pair of plain ``.npy`` files: uint8 images of shape (n, C, H, W) and int64 labels of
shape (n,). Shards are written atomically, one by one.

Why .npy shards (and not WebDataset tars or MosaicML streaming): a prepared split must support
random access by global index -- the training order is a seeded permutation of all images, split
over DDP ranks by torch's DistributedSampler, and a run killed mid-epoch resumes at the exact image
it stopped at. A .npy file has a fixed header and then the array, so image i of a shard is
``count * image_bytes`` further on: one positioned read, no decoding, no index to build, and
nothing read that the rank does not use. DVC versions the folder file by file, so a shard whose
images did not change is neither re-stored nor re-pushed, and teammates ``dvc pull`` only the
shards they lack; on a cluster the shards sit on shared storage or are pulled per node.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from ganops.data.sources import DataError
from ganops.io import atomic_path, update_from_file

_SHARD_NAME = re.compile(r"[A-Za-z0-9_-]+/(images|labels)-\d{5}\.npy")


def shard_digest(folder: Path, shard: Shard) -> str:
    """The sha256 of a shard as the manifest records it (images file, then labels file), read in chunks."""
    digest = hashlib.sha256()
    for name in (shard.images, shard.labels):
        update_from_file(digest, Path(folder) / name)
    return "sha256:" + digest.hexdigest()


def shard_intact(folder: Path, shard: Shard) -> bool:
    try:
        return shard_digest(folder, shard) == shard.sha256
    except OSError:
        return False


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    images: str  # relative to the prepared folder
    labels: str
    count: int
    sha256: str  # over the images file's bytes, then the labels file's
    # What an image folder's shard was made from (the decode settings, each file's path and sha256),
    # and the files of it that were skipped: a later prepare reuses the shard when these match.
    sources: str | None = None
    skipped: dict[str, str] = {}

    @field_validator("images", "labels")
    @classmethod
    def _inside_the_prepared_folder(cls, name: str) -> str:
        # a manifest names its shards; a name like ../../etc/x or /abs would read outside the folder
        if not _SHARD_NAME.fullmatch(name):
            raise ValueError(f"shard file {name!r} is not of the form <split>/images-NNNNN.npy or labels-NNNNN.npy")
        return name


class SplitIndex(BaseModel):
    """Where one split's images are: its shards in order, and one digest over all of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int
    shard_size: int
    shape: list[int]  # (C, H, W)
    shards: list[Shard]
    sha256: str


def split_digest(shards: list[Shard]) -> str:
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard.count}:{shard.sha256}\n".encode())
    return "sha256:" + digest.hexdigest()


def _shard_names(split: str, number: int) -> tuple[str, str]:
    """Shard ``number`` of ``split``: its images and labels files, relative to the prepared folder."""
    return f"{split}/images-{number:05d}.npy", f"{split}/labels-{number:05d}.npy"


def write_shard(folder: Path, split: str, number: int, images: np.ndarray, labels: np.ndarray, **record) -> Shard:
    """Write shard ``number`` of ``split`` under ``folder``, each file atomically."""
    names = _shard_names(split, number)
    digest = hashlib.sha256()  # over the bytes as they are written, not read back
    for name, array in zip(names, (images, labels)):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.lib.format.write_array(_HashingWriter(handle, digest), np.ascontiguousarray(array), allow_pickle=False)
    return Shard(images=names[0], labels=names[1], count=len(labels), sha256="sha256:" + digest.hexdigest(), **record)


def link_shard(old_folder: Path, shard: Shard, folder: Path, split: str, number: int) -> Shard:
    """Shard ``shard`` of ``old_folder``, unchanged, as shard ``number`` of ``split`` under ``folder``
    (a hard link where the file system allows it, else a copy)."""
    names = _shard_names(split, number)
    for old, new in zip((shard.images, shard.labels), names):
        source, target = Path(old_folder) / old, folder / new
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return shard.model_copy(update={"images": names[0], "labels": names[1]})


class _HashingWriter:
    """A file that also feeds every byte written to a hash."""

    def __init__(self, handle, digest) -> None:
        self.handle, self.digest = handle, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def split_index(shards: list[Shard], shard_size: int, shape: tuple[int, ...]) -> SplitIndex:
    return SplitIndex(count=sum(s.count for s in shards), shard_size=shard_size, shape=list(shape), shards=shards,
                      sha256=split_digest(shards))


def _header_offset(path: Path) -> tuple[int, tuple[int, ...]]:
    """Where a .npy file's data starts, and the array's shape (dtype and order checked by the caller)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered array")
        return handle.tell(), shape, dtype


class PreparedSplit:
    """One split of a prepared folder: its labels in memory (8 bytes an image), its images read from
    the shards on demand -- a range, or any indices -- so memory does not grow with the data set."""

    def __init__(self, folder: Path, index: SplitIndex) -> None:
        self.folder, self.index = Path(folder), index
        self.shape = tuple(index.shape)
        self.image_bytes = int(np.prod(self.shape))
        self.starts = np.cumsum([0] + [s.count for s in index.shards])
        self._offsets: dict[int, int] = {}
        self._labels: np.ndarray | None = None
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return self.index.count

    @property
    def nbytes(self) -> int:
        return self.index.count * self.image_bytes

    def _verify(self, shard: int) -> None:
        """Each shard's bytes against the manifest's sha256, once per reader (so once a stage run): a
        shard changed in place would otherwise train under the original's checksums."""
        if shard in self._verified:
            return
        record = self.index.shards[shard]
        try:
            actual = shard_digest(self.folder, record)
        except OSError as error:
            raise DataError(f"{self.folder / record.images}: not a readable shard ({error}); run `dvc repro -f prepare`")\
                from None
        if actual != record.sha256:
            raise DataError(f"{self.folder / record.images}: its bytes have sha256 {actual[7:23]}..., the manifest "
                            f"records {record.sha256[7:23]}...: the shard changed after prepare wrote it; run "
                            "`dvc checkout` or `dvc repro -f prepare`")
        self._verified.add(shard)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            for shard in range(len(self.index.shards)):
                self._verify(shard)
            parts = [np.load(self.folder / s.labels, allow_pickle=False) for s in self.index.shards]
            self._labels = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return self._labels

    def _truncated(self, shard: int) -> DataError:
        return DataError(f"{self.index.shards[shard].images}: shorter than its header says; run `dvc repro -f prepare`")

    def _offset(self, shard: int) -> int:
        if shard not in self._offsets:
            self._verify(shard)
            path = self.folder / self.index.shards[shard].images
            try:
                offset, shape, dtype = _header_offset(path)
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not a readable shard ({error}); run `dvc repro -f prepare`") from None
            expected = (self.index.shards[shard].count, *self.shape)
            if tuple(shape) != expected or dtype != np.uint8:
                raise DataError(f"{path}: holds {dtype} {tuple(shape)}, the manifest says uint8 {expected}; "
                                "run `dvc repro -f prepare`")
            self._offsets[shard] = offset
        return self._offsets[shard]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Images ``start`` to ``stop`` (a contiguous range), shard reads of whole runs."""
        stop = min(stop, len(self))
        out = np.empty((stop - start, *self.shape), dtype=np.uint8) if out is None else out
        position = start
        while position < stop:
            shard = int(np.searchsorted(self.starts, position, side="right") - 1)
            end = min(stop, int(self.starts[shard + 1]))
            first = position - int(self.starts[shard])
            with open(self.folder / self.index.shards[shard].images, "rb") as handle:
                handle.seek(self._offset(shard) + first * self.image_bytes)
                view = out[position - start : end - start].reshape(-1)
                if handle.readinto(memoryview(view)) != view.nbytes:
                    raise self._truncated(shard)
            position = end
        return out

    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images at any ``indices`` (in that order): one positioned read per image."""
        out = np.empty((len(indices), *self.shape), dtype=np.uint8) if out is None else out
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        flat = out.reshape(len(indices), -1)
        handles: dict[int, int] = {}
        try:
            for row, (index, shard) in enumerate(zip(indices.tolist(), shards.tolist())):
                if shard not in handles:
                    handles[shard] = os.open(self.folder / self.index.shards[shard].images, os.O_RDONLY)
                position = self._offset(shard) + (index - int(self.starts[shard])) * self.image_bytes
                if os.preadv(handles[shard], [memoryview(flat[row])], position) != self.image_bytes:
                    raise self._truncated(shard)
        finally:
            for handle in handles.values():
                os.close(handle)
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.read(start, stop), self.labels[start:stop]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory (small data sets)."""
        return self.read(0, len(self)), self.labels
