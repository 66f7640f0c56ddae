"""The prepared data format: validated uint8 train/test arrays and a manifest, in one folder
(written by the prepare stage, ganops.stages.prepare; read by every later stage)."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ganops.config import DataParams
from ganops.data.sources import SOURCES, DataError, SourceData
from ganops.io import atomic_dir

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1
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


def _save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """An .npz that np.load reads, written byte-for-byte reproducibly (np.savez stamps the time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("images", images), ("labels", labels)):
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def load_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one prepared split: uint8 images (N, C, H, W) and int64 labels (N,). No pickles."""
    path = Path(prepared_dir) / f"{split}.npz"
    if not path.exists():
        raise DataError(f"{path} is missing; run `ganops prepare` (or `dvc repro prepare`) first")
    with np.load(path, allow_pickle=False) as arrays:
        return arrays["images"], arrays["labels"]


class SplitFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    sha256: str


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
    files: dict[str, SplitFile]

    def checksum(self, split: str) -> str:
        """The sha256 of a split's .npz: what generator specs, references and evaluations record."""
        return self.files[split].sha256


def load_manifest(prepared_dir: Path) -> Manifest:
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path} is missing; run `ganops prepare` (or `dvc repro prepare`) first")
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
    with atomic_dir(out_dir) as staging:
        for split, indices in (("train", train_idx), ("test", test_idx)):
            digest = _save_split(staging / f"{split}.npz", data.images[indices], data.labels[indices])
            record["files"][split] = {"path": f"{split}.npz", "sha256": digest}
        manifest = Manifest.model_validate(record)
        (staging / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    log.info("prepared %d train / %d test images into %s", len(train_idx), len(test_idx), out_dir)
    return manifest
