"""Data sources, validation and the prepare stage."""

from ganops.data.prepare import load_manifest, load_split, prepare
from ganops.data.sources import DataError

__all__ = ["DataError", "load_manifest", "load_split", "prepare"]
