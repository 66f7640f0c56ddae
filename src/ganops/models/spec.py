"""Architecture specs: everything needed to rebuild a network, and nothing else.

``generator.json`` is a serialised :class:`GeneratorSpec`; evaluation, export and serving build the
generator from it and never re-derive the architecture from params.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from ganops import GanopsError

RESOLUTIONS = (8, 16, 32, 64, 128)
# The network families (ganops.models.build_generator / build_discriminator): "dcgan" (ganops.models.dcgan,
# the default) and "resnet" (ganops.models.resnet). ModelParams.arch lists the same names (tests/test_models.py).
Arch = Literal["dcgan", "resnet"]


class SpecError(GanopsError):
    """A generator.json that can't describe a network."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: int
    channels: Literal[1, 3]
    num_classes: int = Field(0, ge=0, description="0 for an unconditional network")
    max_channels: int = Field(512, ge=1)

    @field_validator("resolution")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in RESOLUTIONS:
            raise ValueError(f"resolution {value} is not one of {RESOLUTIONS}")
        return value

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


class GeneratorSpec(_Spec):
    arch: Arch = "dcgan"
    latent_dim: int = Field(ge=1)
    g_channels: int = Field(ge=1)
    class_names: list[str] = Field(default_factory=list)
    output_range: tuple[float, float] = (-1.0, 1.0)
    output_layout: Literal["NCHW"] = "NCHW"
    data_checksum: str | None = None

    def save(self, path: Path) -> None:
        from ganops.io import write_json_atomic

        write_json_atomic(Path(path), self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> GeneratorSpec:
        path = Path(path)
        if not path.exists():
            raise SpecError(f"generator spec {path} is missing; train a generator first (`dvc repro train`)")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValidationError) as error:
            raise SpecError(f"{path} is not a valid generator spec: {error}") from None


class DiscriminatorSpec(_Spec):
    d_channels: int = Field(ge=1)
    spectral_norm: bool = True
    arch: Arch = "dcgan"

    @model_serializer(mode="wrap")
    def _arch_only_when_not_dcgan(self, handler):
        # A DCGAN discriminator's record is what it was before there was a choice (the field came later):
        # the same dump, so the same training fingerprint. Any other arch is written out.
        data = handler(self)
        if self.arch == "dcgan":
            data.pop("arch", None)
        return data
