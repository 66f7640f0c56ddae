"""Where a model comes from: a local ONNX file, or an MLflow registry URI such as
``models:/ganops-generator@champion``.

A locator tells when the model behind it changed, a new file or a moved alias, and fetches the
current one as a local file. It builds on runtime, which knows nothing of where models come from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ganops.config import MlflowParams
from ganops.io import atomic_dir
from ganops.paths import cache_dir
from ganops.serving.runtime import ModelError, OnnxGenerator

log = logging.getLogger(__name__)
REGISTRY_PREFIXES = ("models:/", "runs:/")


@dataclass(frozen=True)
class RegisteredModelRef:
    """A ``models:/`` URI, parsed: a registered model's name and an alias or a version."""

    name: str
    alias: str | None = None
    version: str | None = None


def parse_models_uri(uri: str) -> RegisteredModelRef | None:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``; None for any other URI."""
    if not uri.startswith("models:/"):
        return None
    target = uri.removeprefix("models:/")
    if "@" in target:
        name, alias = target.split("@", 1)
        return RegisteredModelRef(name, alias=alias)
    name, _, version = target.rpartition("/")
    if not name or not version:
        raise ModelError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return RegisteredModelRef(name, version=version)


class FileLocator:
    details = None  # a plain file has no registry entry

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self.uri = str(self.path)

    def stamp(self) -> tuple | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def fetch(self) -> tuple[Path, str | None]:
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        return self.path, None


class RegistryLocator:
    """models:/<name>@<alias>, models:/<name>/<version> or runs:/<run>/<path> from the MLflow store."""

    def __init__(self, uri: str, mlflow_cfg: MlflowParams | None, root: Path = Path(".")) -> None:
        from ganops.tracking.store import connect, tracking_uri

        self.uri = uri
        cfg = self.cfg = mlflow_cfg or MlflowParams()
        self.client = connect(cfg, root)
        self.store = tracking_uri(cfg, root)
        self.cache = cache_dir() / "models"
        self.details: dict | None = None  # registry name, version and evaluation of the last fetch

    def _version(self):
        ref = parse_models_uri(self.uri)
        if ref is None:
            return None
        try:
            if ref.alias is not None:
                return self.client.get_model_version_by_alias(ref.name, ref.alias)
            return self.client.get_model_version(ref.name, ref.version)
        except Exception as error:
            raise ModelError(f"{self.uri}: not found in the registry ({str(error)[:200]})") from None

    def stamp(self) -> tuple | None:
        version = self._version()
        return (version.name, str(version.version), version.source) if version is not None else (self.uri,)

    def fetch(self) -> tuple[Path, str | None]:
        import mlflow.artifacts

        from ganops.tracking.store import http_settings

        version = self._version()
        source = f"models:/{version.name}/{version.version}" if version is not None else self.uri
        # keyed by store and artifact source too: version 1 of two stores are different models
        key = hashlib.sha256(f"{self.store}|{source}|{version.source if version else ''}".encode()).hexdigest()[:16]
        destination = self.cache / f"{source.split(':/', 1)[1].replace('/', '_')}-{key}"
        if not destination.is_dir():
            try:
                with atomic_dir(destination) as staging:  # a broken-off download leaves no half model
                    with http_settings(self.cfg):
                        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging))
            except Exception as error:
                raise ModelError(f"{self.uri}: could not download ({str(error)[:200]})") from None
        found = sorted(destination.rglob("*.onnx"))
        if not found:
            raise ModelError(f"{self.uri}: the registered model holds no .onnx file")
        if version is not None:
            _verify(found[0], version, self.uri)
            self.details = {"name": version.name, "version": str(version.version), "uri": self.uri,
                            "evaluation": version.tags.get("evaluation")}
        return found[0], (str(version.version) if version is not None else None)


def _verify(path: Path, version, uri: str) -> None:
    """The downloaded (or cached) file must be the one register recorded: sha256 against the version's tag."""
    from ganops.io import file_sha256
    from ganops.tracking.store import ONNX_DIGEST_TAG

    expected = version.tags.get(ONNX_DIGEST_TAG)
    if expected is None:
        log.warning("%s (v%s) carries no %s tag (not registered by ganops): its file cannot be verified",
                    uri, version.version, ONNX_DIGEST_TAG)
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ModelError(f"{uri}: {path} has sha256 {actual}, but v{version.version} was registered with {expected}; "
                         f"refusing a file that is not the registered model (delete {path.parent} to download it again)")


def locate(uri: str | Path, mlflow_cfg: MlflowParams | None = None, root: Path = Path(".")):
    text = str(uri)
    if text.startswith(REGISTRY_PREFIXES):
        return RegistryLocator(text, mlflow_cfg, root)
    return FileLocator(Path(text))


def open_generator(uri: str | Path, mlflow_cfg: MlflowParams | None = None, **session_options) -> OnnxGenerator:
    """The generator at a local ONNX path or a registry URI such as models:/ganops-generator@champion."""
    path, _ = locate(uri, mlflow_cfg).fetch()
    return OnnxGenerator(path, **session_options)
