"""What `ganops generate` and `ganops serve` do, behind the typer commands in ganops.cli."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from ganops import GanopsError
from ganops.config import MlflowParams, ServeParams
from ganops.io import atomic_dir, write_bytes_atomic
from ganops.serving.locate import locate, open_generator
from ganops.visualize import grid_png, image_png, sample_grid_png

log = logging.getLogger(__name__)


def generate_images(model: str, n: int, seed: int, label: int | None, out: Path,
                    mlflow_cfg: MlflowParams | None = None, truncation: float | None = None) -> Path:
    generator = open_generator(model, mlflow_cfg)
    try:
        images, labels = generator.sample(n, seed, label, truncation)
    except ValueError as error:
        raise GanopsError(str(error)) from None
    if out.suffix.lower() == ".png":
        spec = generator.spec
        if spec.conditional and label is None and n % spec.num_classes == 0:  # one row per class, as in the reports
            picture = sample_grid_png(images, labels, spec.num_classes, per_class=n // spec.num_classes)
        else:
            picture = grid_png(images, max(1, round(n**0.5)))
        write_bytes_atomic(out, picture)
    else:
        with atomic_dir(out) as staging:
            for index, image in enumerate(images):
                name = f"{index:05d}" + (f"_class{labels[index]}" if labels is not None else "") + ".png"
                (staging / name).write_bytes(image_png(image))
    log.info("wrote %d images (seed %d%s) to %s", n, seed, f", truncation {truncation:g}" if truncation else "", out)
    return out


def serve_http(model: str | None, host: str | None, port: int | None, settings: ServeParams | None,
               mlflow_cfg: MlflowParams | None = None, allow_public_without_key: bool = False) -> None:
    import uvicorn

    from ganops.serving.app import ModelSource, create_app

    settings = settings or ServeParams()
    uri = model or settings.model
    host = host or settings.host
    check_exposure(host, settings, allow_public_without_key)
    source = ModelSource(locate(uri, mlflow_cfg), settings.intra_op_threads,  # the model, opened once
                         retry_base_s=settings.reload_interval_s, retry_max_s=settings.reload_retry_max_s)
    if source.generator is None:  # fail now, with a clear message, not in the server's startup
        raise GanopsError(source.last_error or f"model file not found: {uri}")
    uvicorn.run(create_app(source, settings), host=host, port=port or settings.port, log_level="info",
                timeout_graceful_shutdown=10)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, settings: ServeParams, allow_public_without_key: bool) -> None:
    """A service reachable from other machines needs an API key, unless the operator says otherwise."""
    if is_loopback(host) or os.environ.get(settings.api_key_env):
        return
    if allow_public_without_key or settings.allow_public_without_key:
        log.warning("serving on %s WITHOUT an API key (--allow-public-without-key): anyone who reaches this "
                    "port can generate images", host)
        return
    raise GanopsError(
        f"refusing to serve on {host} (reachable from other machines) without an API key: set the environment "
        f"variable {settings.api_key_env} to a secret that clients send as X-API-Key, bind to 127.0.0.1, or pass "
        f"--allow-public-without-key (serve.allow_public_without_key) if another layer guards the port")
