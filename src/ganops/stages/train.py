"""Stage train: data/prepared/ -> the EMA generator (models/generator.*), its samples, loss log and
report; opens the pipeline's MLflow run (reports/mlflow_run.json). The loop itself is
ganops.training.loop.fit; with train.nproc > 1 the CLI relaunches this stage under torchrun.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from ganops.config import Params
from ganops.data import load_manifest, open_split
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.models import GeneratorSpec
from ganops.paths import ProjectPaths
from ganops.pixels import to_uint8
from ganops.tracking.runs import log_training, preflight
from ganops.training.loop import LOG_FIELDS, fit
from ganops.visualize import sample_grid_png


def train(params: Params, root: Path = Path(".")) -> dict:
    """Train on data/prepared/ and write the generator, reports and samples; returns reports/train.json's
    content (an empty dict on the ranks other than 0 under torchrun)."""
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    images = open_split(paths.prepared, "train")  # held in memory or streamed from its shards: fit decides
    result = fit(params.model, params.train, manifest, images, images.labels, paths.checkpoints,
                 before_training=lambda: preflight(params.mlflow, root))
    if result is None:
        return {}
    g_spec = result.spec
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
