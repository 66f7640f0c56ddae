"""Stage train: data/prepared/ -> the EMA generator (models/generator.*), its samples, loss log and
report; opens the pipeline's MLflow run (reports/mlflow_run.json). The stage builds the networks'
specs from the model params and the manifest, and resolves train.augment. The loop itself is
ganops.training.loop.fit. With train.nproc > 1 the CLI relaunches this stage under torchrun.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from ganops.config import ModelParams, Params
from ganops.data import load_manifest, open_split
from ganops.data.prepare import Manifest
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.models import DiscriminatorSpec, GeneratorSpec
from ganops.paths import ProjectPaths
from ganops.pixels import to_uint8
from ganops.tracking.runs import log_training, preflight
from ganops.training.augment import resolve_augment
from ganops.training.loop import LOG_FIELDS, fit
from ganops.visualize import sample_grid_png


def train(params: Params, root: Path = Path(".")) -> dict:
    """Train on data/prepared/ and write the generator, reports and samples; returns reports/train.json's
    content (an empty dict on the ranks other than 0 under torchrun)."""
    paths, cfg = ProjectPaths(root), params.train
    manifest = load_manifest(paths.prepared)
    images = open_split(paths.prepared, "train")  # held in memory or streamed from its shards: fit decides
    g_spec = generator_spec(params.model, manifest)
    augmentation = resolve_augment(cfg.augment, manifest.source, len(images.labels), cfg.augment_auto_below)
    result = fit(g_spec, discriminator_spec(params.model, manifest), cfg, augmentation, images, images.labels,
                 paths.checkpoints, before_training=lambda: preflight(params.mlflow, root))
    if result is None:
        return {}
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in result.G_ema.state_dict().items()}
    write_bytes_atomic(paths.generator_weights, safetensors_save(weights, metadata={"format": "pt"}))
    g_spec.save(paths.generator_spec)
    _write_log(paths.train_log, result.log_rows)
    _write_samples(result.G_ema, g_spec, paths.samples, result.device, params.train.seed)
    write_json_atomic(paths.train_report, result.summary)
    # Tracking comes last: if the store fails now, every output above is kept and a re-run resumes
    # from the final checkpoint straight to this point.
    log_training(params, root, paths.mlflow_run, manifest, result.summary, result.log_rows, result.started_at,
                 [paths.samples, paths.train_log, paths.generator_spec])
    return result.summary


def generator_spec(model: ModelParams, manifest: Manifest) -> GeneratorSpec:
    """The generator the model params describe for the prepared data (its checksum included)."""
    return GeneratorSpec(
        latent_dim=model.latent_dim,
        g_channels=model.g_channels,
        max_channels=model.max_channels,
        resolution=manifest.resolution,
        channels=manifest.channels,
        num_classes=manifest.num_classes if model.conditional else 0,
        class_names=manifest.class_names if model.conditional else [],
        data_checksum=manifest.checksum("train"),
    )


def discriminator_spec(model: ModelParams, manifest: Manifest) -> DiscriminatorSpec:
    return DiscriminatorSpec(
        d_channels=model.d_channels,
        max_channels=model.max_channels,
        spectral_norm=model.spectral_norm,
        resolution=manifest.resolution,
        channels=manifest.channels,
        num_classes=manifest.num_classes if model.conditional else 0,
    )


def _write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


@torch.no_grad()
def _write_samples(G_ema: torch.nn.Module, spec: GeneratorSpec, path: Path, device: torch.device, seed: int) -> None:
    """A fixed-noise grid: 8 per class, one row each, when conditional; else 8 x 8."""
    rows, cols = (spec.num_classes, 8) if spec.conditional else (8, 8)
    generator = torch.Generator().manual_seed(seed + 2)
    z = torch.randn(rows * cols, spec.latent_dim, generator=generator).to(device)
    y = torch.arange(rows).repeat_interleave(cols) if spec.conditional else None
    images = to_uint8(G_ema(z, y.to(device) if y is not None else None)).cpu().numpy()
    write_bytes_atomic(path, sample_grid_png(images, y.numpy() if y is not None else None, spec.num_classes, cols))
