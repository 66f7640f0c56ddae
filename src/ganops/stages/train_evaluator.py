"""Stage train_evaluator: data/prepared/ -> the domain classifier (models/evaluator.*) and its
accuracy (reports/evaluator.json), the offline evaluation backbone. "evaluator" in the stage's, files'
and params' names means the domain classifier (:mod:`ganops.metrics.domain_classifier`)."""

from __future__ import annotations

from pathlib import Path

from ganops.config import Params
from ganops.data import load_manifest, open_split
from ganops.device import resolve_device
from ganops.io import write_json_atomic
from ganops.metrics.domain_classifier import fit_domain_classifier, save_domain_classifier
from ganops.paths import ProjectPaths


def train_evaluator(params: Params, root: Path = Path(".")) -> dict:
    """Train the domain classifier on the train split, score it on the test split, write it."""
    paths = ProjectPaths(root)
    manifest = load_manifest(paths.prepared)
    train, test = open_split(paths.prepared, "train"), open_split(paths.prepared, "test")
    device = resolve_device(params.eval.device, "eval.device")
    model, report = fit_domain_classifier(params.eval.evaluator, manifest, train, test, device)
    save_domain_classifier(model, paths.evaluator_weights, paths.evaluator_spec)
    write_json_atomic(paths.evaluator_report, report)
    return report
