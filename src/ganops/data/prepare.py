"""The prepared data format: validated uint8 train/test images in fixed-size shards, and a manifest
that indexes them, in one folder. A source that sets training images aside for choosing (mnist,
fashion-mnist) gets a third split, "validation", beside them; every other folder is as it was.

The prepare stage writes the folder and every later stage reads it. How a shard is laid out is
ganops.data.shards' business."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import pyspng
from pydantic import BaseModel, ConfigDict, ValidationError

from ganops.config import DataParams
from ganops.data.shards import PreparedSplit, Shard, SplitIndex, link_shard, shard_intact, split_index, write_shard
from ganops.data.sources import SOURCES, DataError, FileListing, SourceData, _invalid, decode_file, files_checksum, hash_file
from ganops.io import atomic_dir

log = logging.getLogger(__name__)
MANIFEST_VERSION = 2  # 2: shards (1 was one .npz per split)
MANIFEST = "manifest.json"
MIN_FILES_FOR_WORKERS = 512  # below this, starting worker processes costs more than it saves


def _split(labels: np.ndarray, is_test: np.ndarray | None, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and test: the format's own split, else a seeded split stratified by class."""
    rng = np.random.default_rng(seed)
    if is_test is not None:
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        train_parts, test_parts = [], []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_test = int(round(len(members) * test_fraction)) if len(members) > 1 else 0
            test_parts.append(members[:n_test])
            train_parts.append(members[n_test:])
        train, test = np.concatenate(train_parts), np.concatenate(test_parts)
    # Shuffled once here, so class-sorted sources don't give class-sorted arrays.
    return rng.permutation(train), rng.permutation(test)


def _orders(data: SourceData, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Each split's indices, in the order the split is written: train and test (``_split``), and the
    source's validation images when it has some (drawn after the others, so a source without them
    is split exactly as before)."""
    if data.is_validation is None:
        return dict(zip(("train", "test"), _split(data.labels, data.is_test, test_fraction, seed)))
    if data.is_test is None or (data.is_test & data.is_validation).any():
        raise ValueError("a source's validation images are training images of a format with its own test split")
    rng = np.random.default_rng(seed)
    masks = {"train": ~data.is_test & ~data.is_validation, "test": data.is_test, "validation": data.is_validation}
    return {split: rng.permutation(np.flatnonzero(mask)) for split, mask in masks.items()}


def _check_classes(where: str, labels: np.ndarray, class_names: list[str]) -> None:
    """Every label names a class of the list, and every class of the list has images."""
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if len(bad):
        raise DataError(f"{where}: label {int(labels[bad[0]])} of image {int(bad[0])} is outside its "
                        f"{len(class_names)} classes")
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise DataError(f"{where}: class(es) with no images: {', '.join(empty)} (of {len(class_names)}: "
                        f"{', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''})")


def _check_splits(where: str, sizes: dict[str, int], why: str) -> None:
    """Neither split is empty. No setting asks for an empty one (data.test_fraction > 0), so an empty
    split is always an error, saying why it came out empty."""
    for split, size in sizes.items():
        if not size:
            raise DataError(f"{where}: the {split} split is empty: {why}")


def _stratified(labels: np.ndarray, class_names: list[str], test_fraction: float) -> str:
    """Why a split by class came out empty: the counts and the rounding."""
    counts = np.bincount(labels, minlength=len(class_names))
    largest = int(np.argmax(counts))
    return (f"{len(labels)} image(s) in {len(class_names)} class(es) (the largest, {class_names[largest]}, has "
            f"{int(counts[largest])}) split by class with data.test_fraction={test_fraction:g}, round(count x "
            f"{test_fraction:g}) of each class held out, leave it none; add images or change data.test_fraction")


def _counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts)}


class Manifest(BaseModel):
    """manifest.json: what the prepared folder holds and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = MANIFEST_VERSION
    source: str
    source_path: str | None = None
    source_checksum: str
    resolution: int
    channels: int
    seed: int = 0
    num_classes: int
    class_names: list[str]
    num_train: int = 0
    num_test: int = 0
    counts: dict[str, dict[str, int]] = {}
    skipped: dict[str, Any] = {"count": 0, "files": []}
    files: dict[str, SplitIndex]

    def checksum(self, split: str) -> str:
        """One digest over a split's shards: what generator specs, references and evaluations record."""
        return self.files[split].sha256


def load_manifest(prepared_dir: Path) -> Manifest:
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path} is missing; run `ganops prepare` (or `dvc repro prepare`) first")
    try:
        version = json.loads(path.read_text()).get("version")
    except (ValueError, AttributeError):
        version = None
    if isinstance(version, int) and version != MANIFEST_VERSION:
        raise DataError(f"{path} is prepared data format {version}; this ganops reads format {MANIFEST_VERSION}: "
                        "run `dvc repro -f prepare`")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as error:
        raise DataError(f"{path} is not a ganops manifest ({error.error_count()} problem(s): "
                        f"{error.errors()[0]['msg']}); run `dvc repro -f prepare`") from None


def write_prepared(data_params: DataParams, out_dir: Path) -> Manifest:
    """Read ``data_params.source``, split it, and write ``out_dir`` in one atomic step, a shard at a
    time; returns the manifest. Shard k of a split holds the split's images k * shard_size onwards."""
    source = SOURCES[data_params.source]
    with atomic_dir(out_dir) as staging:
        if source.files is not None:
            record = _write_files(data_params, source.files(data_params), staging, previous=out_dir)
        else:
            record = _write_arrays(data_params, source.load(data_params), staging)
        manifest = Manifest.model_validate(record)
        (staging / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    log.info("prepared %d train / %d test images into %s", manifest.num_train, manifest.num_test, out_dir)
    return manifest


def _record(data_params: DataParams, checksum: str, class_names: list[str], skipped: list[str],
            splits: dict[str, tuple[SplitIndex, np.ndarray]]) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "source": data_params.source,
        "source_path": data_params.path,
        "source_checksum": checksum,
        "resolution": data_params.resolution,
        "channels": data_params.channels,
        "seed": data_params.seed,
        "num_classes": len(class_names),
        "class_names": class_names,
        "num_train": splits["train"][0].count,
        "num_test": splits["test"][0].count,
        "counts": {split: _counts(labels, class_names) for split, (_, labels) in splits.items()},
        "skipped": {"count": len(skipped), "files": skipped},
        "files": {split: index for split, (index, _) in splits.items()},
    }


def _write_arrays(data_params: DataParams, data: SourceData, staging: Path) -> dict:
    if len(data.labels) != len(data.images):
        raise DataError(f"{data_params.source}: {len(data.images)} images but {len(data.labels)} labels")
    if len(data.images) < 2:
        raise DataError(f"{data_params.source}: only {len(data.images)} usable image(s); need at least 2")
    where = data_params.source + (f" at {data_params.path}" if data_params.path else "")
    _check_classes(where, data.labels, data.class_names)
    orders = _orders(data, data_params.test_fraction, data_params.seed)
    _check_splits(where, {split: len(order) for split, order in orders.items()},
                  "the format's own files for it hold no images" if data.is_test is not None
                  else _stratified(data.labels, data.class_names, data_params.test_fraction))
    size = data_params.shard_size
    splits = {}
    for split, order in orders.items():
        chunks = [order[start : start + size] for start in range(0, len(order), size)]
        shards = [write_shard(staging, split, k, data.images[chunk], data.labels[chunk]) for k, chunk in enumerate(chunks)]
        splits[split] = (split_index(shards, size, data.images.shape[1:]), data.labels[order])
    return _record(data_params, data.checksum, data.class_names, data.skipped, splits)


@functools.cache
def decoder_digest() -> str:
    """The code and library versions that turn a file into pixels: a shard decoded by other code is
    not reused (any edit of these modules counts, to err on the safe side)."""
    from ganops.data import images, sources

    digest = hashlib.sha256(f"Pillow {PIL.__version__} pyspng {pyspng.__version__}\n".encode())
    for module in (images, sources):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _sources_digest(data_params: DataParams, names: list[str], digests: list[bytes]) -> str:
    """What a shard of an image folder is made from: the decoder, the decode settings, each file's
    path and bytes."""
    digest = hashlib.sha256(f"{decoder_digest()}\n{data_params.resolution}x{data_params.channels}\n".encode())
    for name, file_digest in zip(names, digests):
        digest.update(name.encode() + b"\0" + file_digest)
    return "sha256:" + digest.hexdigest()


def _reusable_shards(previous: Path, data_params: DataParams) -> dict[str, tuple[Path, Shard]]:
    """The previous prepare's image-folder shards, by what they were made from (empty if none)."""
    try:
        manifest = load_manifest(previous)
    except DataError:
        return {}
    if (manifest.source, manifest.resolution, manifest.channels) != ("imagefolder", data_params.resolution, data_params.channels):
        return {}
    return {shard.sources: (previous, shard) for index in manifest.files.values() for shard in index.shards
            if shard.sources and all((previous / name).is_file() for name in (shard.images, shard.labels))}


def _chunk_of(data_params: DataParams, listing: FileListing, chunk: np.ndarray, match, work, digests: list[bytes],
              skipped: list) -> tuple[np.ndarray | None, np.ndarray, dict[str, str]]:
    """One shard's worth of the listing: (images, labels, the files skipped and why). A shard unchanged
    since the previous prepare (``match``) had its files only hashed (``work``: their digests), and its
    images stay in that shard (None); else ``work`` is the decoded files."""
    root, names = str(listing.root), [listing.files[i] for i in chunk]
    if match is not None:
        for i, file_digest in zip(chunk, work):
            digests[i] = file_digest
        problems = match[1].skipped
        for name, problem in problems.items():
            _invalid(data_params, skipped, f"{root}/{name}", problem)
        labels = np.asarray([listing.labels[i] for i, name in zip(chunk, names) if name not in problems], dtype=np.int64)
        return None, labels, problems
    shape = (data_params.channels, data_params.resolution, data_params.resolution)
    images = np.empty((len(chunk), *shape), dtype=np.uint8)
    labels = np.empty(len(chunk), dtype=np.int64)
    kept, problems = 0, {}
    for i, name, (image, problem, digest) in zip(chunk, names, work):
        digests[i] = digest
        if problem is not None:
            _invalid(data_params, skipped, f"{root}/{name}", problem)
            problems[name] = problem
            continue
        images[kept], labels[kept] = image, listing.labels[i]
        kept += 1
    return images[:kept], labels[:kept], problems


def _write_files(data_params: DataParams, listing: FileListing, staging: Path, previous: Path) -> dict:
    """Decode the listed files over data.workers processes, one shard's worth at a time, in the
    split's order; each shard is written as soon as its images are decoded, while the workers
    already decode the next one (so memory holds at most two shards' images).

    Incremental: a shard whose files (paths and bytes) are those of a shard of the previous
    ``previous`` folder is taken from there instead of decoded again -- its files are only read
    and hashed. The split is a seeded permutation of the whole listing, so this spares the work
    when files were changed in place; a file added or removed moves images across every shard."""
    size, shape = data_params.shard_size, (data_params.channels, data_params.resolution, data_params.resolution)
    root = str(listing.root)
    digests: list[bytes] = [b""] * len(listing.files)
    skipped = list(listing.skipped)
    where = f"data.path {listing.root}"
    orders = _split(listing.labels, None, data_params.test_fraction, data_params.seed)
    # before any decoding: a split the listing already leaves empty
    _check_splits(where, {"train": len(orders[0]), "test": len(orders[1])},
                  _stratified(listing.labels, listing.class_names, data_params.test_fraction))
    reusable = _reusable_shards(previous, data_params)
    splits, reused, total = {}, 0, 0
    with _decoder(data_params, len(listing.files)) as (decode, hash_files):

        def start(chunk: np.ndarray):
            """Shard work begun: a previous shard to link, or the decoding of the chunk's files."""
            paths = [f"{root}/{listing.files[i]}" for i in chunk]
            if reusable:
                file_digests = list(hash_files(paths))
                match = reusable.get(_sources_digest(data_params, [listing.files[i] for i in chunk], file_digests))
                if match is not None and shard_intact(*match):  # a shard changed in place is made again
                    return match, file_digests
            return None, decode(paths)

        for split, order in zip(("train", "test"), orders):
            chunks = [order[begin : begin + size] for begin in range(0, len(order), size)]
            pending = start(chunks[0]) if chunks else None
            shards, kept_labels = [], []
            for k, chunk in enumerate(chunks):
                match, work = pending
                names = [listing.files[i] for i in chunk]
                images, labels, problems = _chunk_of(data_params, listing, chunk, match, work, digests, skipped)
                # the workers start on the next shard before this one is written
                pending = start(chunks[k + 1]) if k + 1 < len(chunks) else None
                if match is not None:
                    shards.append(link_shard(*match, staging, split, k))
                    reused += 1
                else:
                    sources = _sources_digest(data_params, names, [digests[i] for i in chunk])
                    shards.append(write_shard(staging, split, k, images, labels, sources=sources, skipped=problems))
                kept_labels.append(labels)
            total += len(chunks)
            labels_kept = np.concatenate(kept_labels) if kept_labels else np.empty(0, np.int64)
            splits[split] = (split_index(shards, size, shape), labels_kept)
    if reused:
        log.info("%d of %d shards unchanged since the previous prepare: reused, not decoded again", reused, total)
    kept = np.bincount(np.concatenate([labels for _, labels in splits.values()]), minlength=len(listing.class_names))
    if kept.sum() < 2:
        raise DataError(f"data.path {listing.root} holds {int(kept.sum())} readable PNG, JPEG or WebP image(s); need at least 2")
    empty = [name for name, count in zip(listing.class_names, kept) if count == 0]
    if empty:
        raise DataError(f"class folder(s) with no readable images under {listing.root}: {', '.join(empty)}")
    # once unreadable files are skipped (data.skip_invalid), a split may have lost all its images
    _check_splits(where, {split: len(labels) for split, (_, labels) in splits.items()},
                  "each of its images was unreadable and skipped (data.skip_invalid)")
    return _record(data_params, files_checksum(listing, digests), listing.class_names, skipped, splits)


@contextmanager
def _decoder(data_params: DataParams, count: int) -> Iterator[tuple[Callable[[list[str]], Iterable], ...]]:
    """Two functions over a list of files, in order: decoding them, and hashing them; in this
    process for one worker or a few files, else in a pool of data.workers processes (spawned: no
    state forked from the caller)."""
    decode = functools.partial(decode_file, resolution=data_params.resolution, channels=data_params.channels,
                               max_bytes=data_params.max_file_bytes, max_pixels=data_params.max_image_pixels)
    workers = data_params.workers or os.cpu_count() or 1
    if workers == 1 or count < MIN_FILES_FOR_WORKERS:
        yield (lambda paths: map(decode, paths)), (lambda paths: map(hash_file, paths))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        def chunks(paths: list[str]) -> int:
            return max(1, min(64, len(paths) // (4 * workers)))

        yield ((lambda paths: pool.map(decode, paths, chunksize=chunks(paths))),
               (lambda paths: pool.map(hash_file, paths, chunksize=chunks(paths))))


def open_split(prepared_dir: Path, split: str) -> PreparedSplit:
    """One prepared split, read from its shards on demand."""
    manifest = load_manifest(prepared_dir)
    if split not in manifest.files:
        having = "; the mnist and fashion-mnist sources have a validation split" if split == "validation" else ""
        raise DataError(f"{prepared_dir}: no {split!r} split (has {', '.join(manifest.files)}){having}")
    return PreparedSplit(prepared_dir, manifest.files[split])


def load_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One prepared split in memory: uint8 images (N, C, H, W) and int64 labels (N,). No pickles."""
    try:
        return open_split(prepared_dir, split).load()
    except (OSError, ValueError) as error:  # a labels file missing or damaged (images files raise DataError)
        raise DataError(f"{prepared_dir}: the {split} shards can't be read ({error}); run `dvc repro -f prepare`") from None
