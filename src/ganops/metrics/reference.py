"""The reference statistics: the reference split's FID Inception features and their mean and
covariance, in one folder (written by the reference_stats stage, read by evaluate).

Computed once per dataset, protocol and weights, and reused by every evaluation. The record beside
the arrays says exactly what they were computed from, and evaluate refuses statistics that do not
match what it would compute itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ganops import GanopsError
from ganops.io import atomic_dir
from ganops.metrics.backbones import InceptionBackbone, extract_features, resolve_backbone
from ganops.metrics.frechet import feature_statistics

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest

log = logging.getLogger(__name__)
RECORD = "reference.json"
FEATURES = "features.npy"
STATISTICS = "statistics.npz"


@dataclass(frozen=True)
class ReferenceFeatures:
    features: np.ndarray  # float64 (N, D)
    mu: np.ndarray
    sigma: np.ndarray
    record: dict


def resolve_reference(backbone_name: str, inception_weights: str | None, fid_protocol: str, reference: str,
                      device: torch.device, manifest: Manifest) -> tuple[dict, InceptionBackbone | None]:
    """What the reference statistics depend on (and what evaluate checks before reusing them), and for
    the inception backbone the network itself: loaded once, its weights digest read off it."""
    name, weights, fallback = resolve_backbone(backbone_name, inception_weights)
    record = {"backbone": name, "reference": reference, "data_sha256": manifest.checksum(reference)}
    if name != "inception":
        record["fallback_reason"] = fallback
        return record, None
    backbone = InceptionBackbone(weights, fid_protocol, device)
    record.update({"fid_protocol": fid_protocol, "weights": str(weights),
                   "weights_digest": backbone.extractor.weights_digest})
    return record, backbone


def write_reference(folder: Path, record: dict, backbone: InceptionBackbone | None, images: np.ndarray,
                    batch_size: int) -> dict:
    """Write ``folder``: the record, and for the inception backbone the features of the uint8 reference
    ``images`` and their statistics; returns the record."""
    arrays: dict[str, np.ndarray] = {}
    if backbone is not None:
        tensor = torch.from_numpy(images)
        features = extract_features(
            backbone, (tensor[i : i + batch_size] for i in range(0, len(tensor), batch_size)), len(tensor),
            f"reference ({record['reference']})")
        mu, sigma = feature_statistics(features)
        arrays = {"features": features.astype(np.float32), "mu": mu, "sigma": sigma}
        record["num_reference"] = int(len(features))
        record["engine"] = backbone.extractor.engine
    with atomic_dir(folder) as tmp:
        if arrays:
            np.save(tmp / FEATURES, arrays["features"], allow_pickle=False)
            np.savez(tmp / STATISTICS, mu=arrays["mu"], sigma=arrays["sigma"], count=np.int64(len(arrays["features"])))
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("reference statistics (%s): %s", record["backbone"],
             f"{record.get('num_reference')} images of the {record['reference']} split" if arrays
             else record["fallback_reason"])
    return record


def load_reference(folder: Path, expected: dict) -> ReferenceFeatures:
    """The cached reference features in ``folder``, if they were computed exactly as ``expected`` says;
    else a clear error."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise GanopsError(f"{folder / RECORD} is missing: run the reference_stats stage (`dvc repro reference_stats`)") from None
    stale = {key: (record.get(key), value) for key, value in expected.items()
             if key not in ("weights",) and record.get(key) != value}
    if stale:
        details = ", ".join(f"{key}: cached {old!r}, now {new!r}" for key, (old, new) in stale.items())
        raise GanopsError(f"the reference statistics in {folder} were computed differently ({details}); "
                          f"run `dvc repro reference_stats` (or `ganops reference-stats`)")
    features = np.load(folder / FEATURES, allow_pickle=False).astype(np.float64)
    with np.load(folder / STATISTICS, allow_pickle=False) as stats:
        mu, sigma, count = stats["mu"], stats["sigma"], int(stats["count"])
    if count != len(features) or mu.shape != (features.shape[1],):
        raise GanopsError(f"{folder}: features ({features.shape}) and statistics (count {count}) disagree; "
                          f"run `dvc repro -f reference_stats`")
    return ReferenceFeatures(features, mu, sigma, record)
