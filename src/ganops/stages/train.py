"""Stage train: data/prepared/ -> the chosen EMA generator (models/generator.*), its samples, loss
log, in-training evaluations and report (reports/train.json, a ``TrainSummary``); opens the
pipeline's MLflow run (reports/mlflow_run.json). The stage builds the networks' specs from the model
params and the manifest, resolves train.augment, and opens the evaluation's primary backbone for
the in-training scorers (ganops.metrics.snapshot): the loop, ganops.training.loop.fit, only calls
them. With train.nproc > 1 the CLI relaunches this stage under torchrun.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from ganops import CPU_WAIT
from ganops.config import ModelParams, Params
from ganops.data import load_manifest, open_split
from ganops.data.prepare import Manifest
from ganops.device import resolve_device
from ganops.io import write_bytes_atomic, write_json_atomic
from ganops.metrics.evaluation import ReferenceFiles, open_evaluation
from ganops.metrics.snapshot import SnapshotScorer, snapshot_scorers
from ganops.models import DiscriminatorSpec, GeneratorSpec
from ganops.paths import ProjectPaths
from ganops.pixels import to_uint8
from ganops.tracking.runs import lineage_tags, log_training, preflight
from ganops.training.augment import resolve_augment
from ganops.training.loop import Scoring, TrainingJob, fit, preview_inputs
from ganops.training.report import LOG_FIELDS, WATCH_FIELDS, SweepTrialRecord
from ganops.trial import TrialReporter
from ganops.visualize import sample_grid, sample_grid_png

log = logging.getLogger(__name__)


def train(params: Params, root: Path = Path(".")) -> dict:
    """Train on data/prepared/ and write the generator, reports and samples; returns reports/train.json's
    content (an empty dict on the ranks other than 0 under torchrun)."""
    paths, cfg = ProjectPaths(root), params.train
    log.info("CPU: %d torch threads, OpenMP waits: %s", torch.get_num_threads(), CPU_WAIT)
    manifest = load_manifest(paths.prepared)
    images = open_split(paths.prepared, "train")  # held in memory or streamed from its shards: fit decides
    g_spec = generator_spec(params.model, manifest)
    augmentation = resolve_augment(cfg.augment, manifest.source, len(images.labels), cfg.augment_auto_below)
    score, rescore = snapshot_scorers_of(params, paths, manifest, g_spec) if cfg.eval_every else (None, None)
    trial = TrialReporter.from_environment()  # set when a sweep (ganops sweep) runs this pipeline as a trial
    # what this run trains on, taken now: a commit or a data change made while it trains is not it
    lineage = lineage_tags(root, manifest, params)
    job = TrainingJob(g_spec, discriminator_spec(params.model, manifest), cfg, augmentation, images, images.labels,
                      paths.checkpoints)
    result = fit(job, Scoring(score, rescore, trial), before_training=lambda: preflight(params.mlflow, root))
    if result is None:
        return {}
    summary = result.summary
    if trial is not None:
        summary = summary.model_copy(update={"sweep_trial": SweepTrialRecord(
            study=trial.context.study, trial=trial.context.trial_number, pruned=trial.pruned)})
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in result.G_ema.state_dict().items()}
    write_bytes_atomic(paths.generator_weights, safetensors_save(weights, metadata={"format": "pt"}))
    g_spec.save(paths.generator_spec)
    _write_csv(paths.train_log, LOG_FIELDS, result.log_rows)
    _write_csv(paths.train_watch, WATCH_FIELDS, result.watch_rows)
    _write_samples(result.G_ema, g_spec, paths.samples, result.device, params.train.seed)
    write_json_atomic(paths.train_report, summary.as_json())
    _, preview_labels = preview_inputs(g_spec, cfg.seed)
    labels = preview_labels.numpy() if preview_labels is not None else None
    previews = [(step, sample_grid(samples, labels, g_spec.num_classes)) for step, samples in result.previews]
    # Tracking comes last: if the store fails now, every output above is kept and a re-run resumes
    # from the final checkpoint straight to this point.
    log_training(params, root, paths.mlflow_run, lineage, summary, result.log_rows, result.started_at,
                 [paths.samples, paths.train_log, paths.train_watch, paths.generator_spec], result.watch_rows, previews,
                 run_id=trial.run_id if trial is not None else None)
    return summary.as_json()


def snapshot_scorers_of(params: Params, paths: ProjectPaths, manifest: Manifest,
                        g_spec: GeneratorSpec) -> tuple[SnapshotScorer, SnapshotScorer]:
    """The in-training scorer and the final re-scorer: the primary backbone of the evaluation (the FID
    Inception network with the reference_stats stage's statistics, else the domain classifier)."""
    cfg = params.eval
    files = ReferenceFiles(paths.reference, paths.evaluator_weights, paths.evaluator_spec)
    evaluation = open_evaluation(cfg, manifest, open_split(paths.prepared, cfg.reference), g_spec, files,
                                 resolve_device(cfg.device, "eval.device"), primary_only=True)
    return snapshot_scorers(evaluation, params.train.eval_samples)


def generator_spec(model: ModelParams, manifest: Manifest) -> GeneratorSpec:
    """The generator the model params describe for the prepared data (its checksum included)."""
    return GeneratorSpec(
        arch=model.arch,
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
        arch=model.arch,
        d_channels=model.d_channels,
        max_channels=model.max_channels,
        spectral_norm=model.spectral_norm,
        resolution=manifest.resolution,
        channels=manifest.channels,
        num_classes=manifest.num_classes if model.conditional else 0,
    )


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


@torch.no_grad()
def _write_samples(G_ema: torch.nn.Module, spec: GeneratorSpec, path: Path, device: torch.device, seed: int) -> None:
    """The fixed-noise grid of every evaluation, for the shipped generator: 8 per class, one row each,
    when conditional; else 8 x 8."""
    z, y = preview_inputs(spec, seed)
    images = to_uint8(G_ema(z.to(device), y.to(device) if y is not None else None)).cpu().numpy()
    write_bytes_atomic(path, sample_grid_png(images, y.numpy() if y is not None else None, spec.num_classes))
