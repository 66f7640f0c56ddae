"""What a training run reports: the statistics each step returns, the columns of its log, and
``TrainSummary``, the typed record of reports/train.json. It is to train.json what
``ganops.metrics.report.EvaluationReport`` is to eval.json: the train stage writes it, and every
reader of train.json (tracking, the model card, sweeps, flows) reads it back through it.
Imports no torch: readers far from training load it cheaply."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

# What a training step returns, in this order: the last D update's losses, mean D outputs on real
# and fake images and penalty, and ADA's overfitting heuristic real_sign = E[sign(D(real))].
STEP_STATS = ("loss_d", "loss_g", "d_real", "d_fake", "penalty", "real_sign")
# The curves of a log row: the step stats' means since the last row, augmentation's p, the speed.
LOG_CURVES = (*STEP_STATS, "augment_p", "images_per_s")
LOG_FIELDS = ("step", *LOG_CURVES, "wall_time_s")  # the columns of reports/train_log.csv
WATCH_FIELDS = ("step", "metric", "value", "std")  # the columns of reports/train_watch.csv
# The last log row's values that the summary repeats.
FINAL_STATS = ("loss_d", "loss_g", "d_real", "d_fake")


class Candidate(BaseModel):
    """A snapshot the shipped one was chosen among: its in-training score, and its re-score when
    there was more than one candidate."""

    model_config = ConfigDict(extra="forbid")

    step: int
    in_training: float | None
    in_training_std: float | None
    rescored: float | None = None
    rescored_std: float | None = None


class SweepTrialRecord(BaseModel):
    """The sweep trial this run was (ganops.trial), and where its pruner stopped it."""

    model_config = ConfigDict(extra="forbid")

    study: str
    trial: int
    pruned: dict | None


class TrainSummary(BaseModel):
    """reports/train.json. Fields a run did not have (no in-training evaluation, no sweep) are null."""

    model_config = ConfigDict(extra="forbid")

    steps: int
    steps_done: int
    wall_time_s: float  # the loop's, in-training evaluations included
    images_per_s: float  # training steps only
    resumed_from_step: int
    world_size: int
    weights_sha256: str  # every network at the last step, equal on every rank (16 hex digits)
    generator_sha256: str  # the shipped EMA generator (16 hex digits)
    images_from: Literal["memory", "shards"]
    augment: str
    augment_p: float
    loss_d: float | None = None
    loss_g: float | None = None
    d_real: float | None = None
    d_fake: float | None = None
    stopped_early: str | None  # why the run stopped before train.steps; the losses above are then the last finite ones
    chosen_step: int
    chosen_because: str
    watch_metric: str | None = None  # the in-training metric's name, when the run was watched
    watch_s: float | None = None
    choose_s: float | None = None
    rescore_metric: str | None = None
    candidates: list[Candidate] | None = None
    sweep_trial: SweepTrialRecord | None = None

    @field_validator("wall_time_s", "images_per_s", "augment_p", "loss_d", "loss_g", "d_real", "d_fake", "watch_s",
                     "choose_s")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return value

    def as_json(self) -> dict:
        """The content of reports/train.json."""
        return self.model_dump(mode="json")

    @classmethod
    def load(cls, path: Path) -> TrainSummary:
        return cls.model_validate(json.loads(path.read_text()))
