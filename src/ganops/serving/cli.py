"""What `ganops generate` and `ganops serve` do, behind the typer shells in ganops.cli."""

from __future__ import annotations

import logging
from pathlib import Path

from ganops import GanopsError
from ganops.config import ServeParams
from ganops.io import atomic_dir, write_bytes_atomic
from ganops.serving.runtime import OnnxGenerator, resolve_model_uri
from ganops.visualize import grid_png, image_png

log = logging.getLogger(__name__)


def generate_images(model: str, n: int, seed: int, label: int | None, out: Path) -> Path:
    generator = OnnxGenerator.from_uri(model)
    try:
        images, labels = generator.sample(n, seed, label)
    except ValueError as error:
        raise GanopsError(str(error)) from None
    if out.suffix.lower() == ".png":
        conditional_rows = generator.spec.conditional and label is None and n % generator.spec.num_classes == 0
        rows = generator.spec.num_classes if conditional_rows else max(1, round(n**0.5))
        if conditional_rows:  # one row per class, as in the training samples
            order = labels.argsort(kind="stable")
            images = images[order]
        write_bytes_atomic(out, grid_png(images, rows))
    else:
        with atomic_dir(out) as staging:
            for index, image in enumerate(images):
                name = f"{index:05d}" + (f"_class{labels[index]}" if labels is not None else "") + ".png"
                (staging / name).write_bytes(image_png(image))
    log.info("wrote %d images (seed %d) to %s", n, seed, out)
    return out


def serve_http(model: str | None, host: str | None, port: int | None, settings: ServeParams | None) -> None:
    import uvicorn

    from ganops.serving.app import create_app

    settings = settings or ServeParams()
    path = resolve_model_uri(model or settings.model)
    if not path.is_file():
        raise GanopsError(f"model file not found: {path} (run `dvc repro export`, or pass --model)")
    OnnxGenerator(path)  # fail now, with a clear message, rather than in the server's startup
    uvicorn.run(create_app(path, settings), host=host or settings.host, port=port or settings.port,
                log_level="info", timeout_graceful_shutdown=10)
