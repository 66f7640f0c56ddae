"""Every file and folder a stage reads or writes, named once: the file contract between the stages of
dvc.yaml, and the one cache folder outside projects.

tests/test_stage_contract.py checks that the data deps and outs of dvc.yaml are exactly these paths, so
a new output is added here, in dvc.yaml and in its stage module, and nowhere else. What lies inside an
output folder is the format of the package that writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# the evaluation beside eval.json: how it was measured (prose, digests: not DVC metrics), and the per-class
# and truncation numbers (DVC plots)
EVAL_SIBLINGS = {"record": "eval_record.json", "per_class": "eval_per_class.json", "truncation": "eval_truncation.json"}

# The code that decides what training computes, inside the ganops package: the train stage's deps
# in dvc.yaml include it, and a checkpoint written by other code is not resumed.
TRAINING_CODE = ("models", "training", "pixels.py")


def cache_dir() -> Path:
    """Where ganops keeps files outside any project (the FID Inception weights, registry downloads,
    register locks): $GANOPS_CACHE, else $XDG_CACHE_HOME/ganops, else ~/.cache/ganops."""
    if os.environ.get("GANOPS_CACHE"):
        return Path(os.environ["GANOPS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ganops"


def datasets_dir() -> Path:
    """Where ./setup.sh installs the pinned full data sets (the mnist and fashion-mnist sources, one
    folder each), in the ganops cache beside the FID weights."""
    return cache_dir() / "datasets"


@dataclass(frozen=True)
class ProjectPaths:
    root: Path = Path(".")

    # --- prepare -----------------------------------------------------------------------------------
    @property
    def prepared(self) -> Path:
        """The prepare stage's folder (its layout: ganops.data.prepare)."""
        return self.root / "data" / "prepared"

    # --- reference_stats ---------------------------------------------------------------------------
    @property
    def reference(self) -> Path:
        """The reference split's features and statistics (its layout: ganops.metrics.reference)."""
        return self.root / "data" / "reference"

    # --- train -------------------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def generator_weights(self) -> Path:
        return self.models / "generator.safetensors"

    @property
    def generator_spec(self) -> Path:
        return self.models / "generator.json"

    @property
    def checkpoints(self) -> Path:
        """Resumable training state, one folder per setup (ganops.training.checkpoint). Not a DVC output:
        a checkpoint folder that differs (another run's, after `dvc exp apply`) must not mark train changed."""
        return self.models / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.reports / "samples.png"

    @property
    def train_report(self) -> Path:
        return self.reports / "train.json"

    @property
    def train_log(self) -> Path:
        return self.reports / "train_log.csv"

    @property
    def train_watch(self) -> Path:
        """The in-training evaluations: step, metric, value, std (a DVC plot)."""
        return self.reports / "train_watch.csv"

    @property
    def mlflow_run(self) -> Path:
        """The pipeline execution's MLflow run id: train opens the run, later stages log into it."""
        return self.reports / "mlflow_run.json"

    # --- train_evaluator ---------------------------------------------------------------------------
    @property
    def evaluator_weights(self) -> Path:
        return self.models / "evaluator.safetensors"

    @property
    def evaluator_spec(self) -> Path:
        return self.models / "evaluator.json"

    @property
    def evaluator_report(self) -> Path:
        return self.reports / "evaluator.json"

    # --- evaluate ----------------------------------------------------------------------------------
    @property
    def eval_report(self) -> Path:
        """The headline metrics and what they measured (DVC metrics); its siblings, EVAL_SIBLINGS, the rest."""
        return self.reports / "eval.json"

    @property
    def eval_record(self) -> Path:
        return self.eval_report.with_name(EVAL_SIBLINGS["record"])

    @property
    def eval_per_class(self) -> Path:
        return self.eval_report.with_name(EVAL_SIBLINGS["per_class"])

    @property
    def eval_truncation(self) -> Path:
        return self.eval_report.with_name(EVAL_SIBLINGS["truncation"])

    @property
    def eval_samples(self) -> Path:
        return self.reports / "eval_samples.png"

    @property
    def eval_memorisation(self) -> Path:
        """The generated images closest to a training image, beside it (evaluate, reference: train)."""
        return self.reports / "eval_memorisation.png"

    # --- export ------------------------------------------------------------------------------------
    @property
    def onnx(self) -> Path:
        return self.models / "generator.onnx"

    @property
    def fp16(self) -> Path:
        """models/fp16/: the fp16 model, when export.fp16 (the folder is the DVC output)."""
        return self.models / "fp16"

    @property
    def export_report(self) -> Path:
        return self.reports / "export.json"

    # --- register ----------------------------------------------------------------------------------
    @property
    def register_report(self) -> Path:
        return self.reports / "register.json"

    @property
    def model_card(self) -> Path:
        """The registered version's MODEL_CARD.md and its figures (ganops.tracking.card)."""
        return self.reports / "model_card"

    # --- sweeps (ganops sweep: no stage, no DVC output) ----------------------------------------------
    @property
    def sweep_report(self) -> Path:
        """The last sweep's ranked trials (ganops.sweeps)."""
        return self.reports / "sweep.json"

    @property
    def sweep_table(self) -> Path:
        """The same ranking as a Markdown table (printed, and on the sweep's MLflow parent run)."""
        return self.reports / "sweep.md"

    @property
    def sweep_storage(self) -> Path:
        """The default Optuna study storage of sweeps on this machine (sqlite)."""
        return self.root / "sweeps.db"

    @property
    def sweep_workspaces(self) -> Path:
        """Where each running trial has its own git worktree (inside DVC's ignored tmp folder)."""
        return self.root / ".dvc" / "tmp" / "sweeps"

    def stage_files(self) -> dict[str, Path]:
        """Every file and folder above that a stage of dvc.yaml reads or writes as a dep or out, by name
        (not the folders that only group them, the checkpoints, nor the sweeps' files)."""
        not_stage_files = {"models", "reports", "checkpoints", "sweep_report", "sweep_table", "sweep_storage",
                           "sweep_workspaces"}
        return {name: getattr(self, name) for name, value in vars(type(self)).items()
                if isinstance(value, property) and name not in not_stage_files}
