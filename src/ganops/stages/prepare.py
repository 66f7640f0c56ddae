"""Stage prepare: the raw images of data.source -> data/prepared/, uint8 train/test shards and
their manifest."""

from __future__ import annotations

from pathlib import Path

from ganops.config import Params
from ganops.data import write_prepared
from ganops.paths import ProjectPaths


def prepare(params: Params, root: Path = Path(".")) -> dict:
    """Validate and normalise ``params.data``'s images into data/prepared/; returns the manifest."""
    return write_prepared(params.data, ProjectPaths(root).prepared)
