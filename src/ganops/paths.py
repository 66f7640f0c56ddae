"""Where each stage reads and writes: the file contract between stages (see dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def reference(self) -> Path:
        """The reference split's features and statistics (the reference_stats stage)."""
        return self.root / "data" / "reference"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def generator_weights(self) -> Path:
        return self.models / "generator.safetensors"

    @property
    def generator_spec(self) -> Path:
        return self.models / "generator.json"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
