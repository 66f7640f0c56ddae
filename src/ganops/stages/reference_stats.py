"""Stage reference_stats: the reference split of data/prepared/ -> data/reference/ (its FID Inception
features and statistics, once per data, FID protocol and weights; every evaluation reuses them)."""

from __future__ import annotations

from pathlib import Path

from ganops.config import Params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.metrics.reference import resolve_reference, write_reference
from ganops.paths import ProjectPaths


def reference_stats(params: Params, root: Path = Path(".")) -> dict:
    """Write data/reference/: the record, and for the inception backbone the features and statistics."""
    cfg = params.eval
    paths = ProjectPaths(root)
    record, backbone = resolve_reference(cfg.backbone, cfg.inception_weights, cfg.fid_protocol, cfg.reference,
                                         resolve_device(cfg.device, "eval.device"), load_manifest(paths.prepared),
                                         cfg.reference_max_features, cfg.native_size)
    split = open_split(paths.prepared, cfg.reference) if backbone is not None else None
    return write_reference(paths.reference, record, backbone, split, cfg.batch_size, cfg.reference_max_features)
