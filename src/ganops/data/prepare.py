"""The prepared data format: validated uint8 train/test images in fixed-size shards, and a manifest
that indexes them, in one folder (written by the prepare stage, ganops.stages.prepare; read by every
later stage). The shards' layout is ganops.data.shards'."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ganops.config import DataParams
from ganops.data.shards import PreparedSplit, ShardWriter, SplitIndex
from ganops.data.sources import SOURCES, DataError, SourceData
from ganops.io import atomic_dir

log = logging.getLogger(__name__)
MANIFEST_VERSION = 2  # 2: shards (1 was one .npz per split)
MANIFEST = "manifest.json"


def _split(data: SourceData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and test: the format's own split, else a seeded split stratified by class."""
    rng = np.random.default_rng(seed)
    if data.is_test is not None:
        train, test = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    else:
        train_parts, test_parts = [], []
        for label in np.unique(data.labels):
            members = rng.permutation(np.flatnonzero(data.labels == label))
            n_test = int(round(len(members) * test_fraction)) if len(members) > 1 else 0
            test_parts.append(members[:n_test])
            train_parts.append(members[n_test:])
        train, test = np.concatenate(train_parts), np.concatenate(test_parts)
    # Shuffled once here, so class-sorted sources don't give class-sorted arrays.
    return rng.permutation(train), rng.permutation(test)


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
    """Read ``data_params.source``, split it, and write ``out_dir`` in one atomic step; returns the manifest."""
    data = SOURCES[data_params.source].load(data_params)
    if len(data.labels) != len(data.images):
        raise DataError(f"{data_params.source}: {len(data.images)} images but {len(data.labels)} labels")
    if len(data.images) < 2:
        raise DataError(f"{data_params.source}: only {len(data.images)} usable image(s); need at least 2")
    train_idx, test_idx = _split(data, data_params.test_fraction, data_params.seed)

    record = {
        "version": MANIFEST_VERSION,
        "source": data_params.source,
        "source_path": data_params.path,
        "source_checksum": data.checksum,
        "resolution": data_params.resolution,
        "channels": data_params.channels,
        "seed": data_params.seed,
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "num_train": int(len(train_idx)),
        "num_test": int(len(test_idx)),
        "counts": {
            "train": _counts(data.labels[train_idx], data.class_names),
            "test": _counts(data.labels[test_idx], data.class_names),
        },
        "skipped": {"count": len(data.skipped), "files": data.skipped},
        "files": {},
    }
    shape = data.images.shape[1:]
    with atomic_dir(out_dir) as staging:
        for split, indices in (("train", train_idx), ("test", test_idx)):
            writer = ShardWriter(staging, split, data_params.shard_size, shape)
            for start in range(0, len(indices), data_params.shard_size):
                chunk = indices[start : start + data_params.shard_size]
                writer.add(data.images[chunk], data.labels[chunk])
            record["files"][split] = writer.close()
        manifest = Manifest.model_validate(record)
        (staging / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    log.info("prepared %d train / %d test images into %s", len(train_idx), len(test_idx), out_dir)
    return manifest


def open_split(prepared_dir: Path, split: str) -> PreparedSplit:
    """One prepared split, read from its shards on demand."""
    manifest = load_manifest(prepared_dir)
    if split not in manifest.files:
        raise DataError(f"{prepared_dir}: no {split!r} split (has {', '.join(manifest.files)})")
    return PreparedSplit(prepared_dir, manifest.files[split])


def load_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One prepared split in memory: uint8 images (N, C, H, W) and int64 labels (N,). No pickles."""
    try:
        return open_split(prepared_dir, split).load()
    except (OSError, ValueError) as error:
        raise DataError(f"{prepared_dir}: the {split} shards can't be read ({error}); run `dvc repro -f prepare`") from None
