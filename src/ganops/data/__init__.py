"""Data sources, validation and the prepared data format."""

from ganops.data.prepare import load_manifest, load_split, open_split, write_prepared
from ganops.data.sources import DataError

__all__ = ["DataError", "load_manifest", "load_split", "open_split", "write_prepared"]
