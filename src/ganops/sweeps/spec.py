"""The sweep file: what to search (params.yaml keys and their ranges or choices), how (an Optuna
sampler, a pruner), how much (a trial budget) and on what (seeds repeated per trial, the metric).

    study: lr-and-loss            # the Optuna study, the MLflow parent run, the prefix of every experiment
    trials: 12
    sampler: {name: tpe, seed: 0} # tpe | random | grid (grid: every key a list of choices)
    pruner: {name: successive-halving}    # (Optuna's defaults) | median | none
    fixed: {train.eval_every: 500}                                     # set in every trial
    space:
      train.lr_g: {low: 1.0e-4, high: 2.0e-3, log: true}                # a range: int or float as params.yaml's key is
      train.loss: {choices: [minimax, hinge]}
    seeds: {param: train.seed, values: [0, 1, 2]}                      # each trial trains every seed (optional)

Every key and value is checked against ganops' params model before any trial runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ganops import GanopsError
from ganops.config import Params, validate_params
from ganops.trial import PrunerSpec

# Sections a trial's pipeline (prepare .. evaluate) never reads: sweeping them would only relabel runs.
NOT_SEARCHABLE = ("export", "serve", "mlflow", "register", "flow")
Scalar = bool | int | float | str


class SweepError(GanopsError):
    """A sweep file, its keys or its study can't be used as they are."""


class Dimension(BaseModel):
    """One searched key: a list of choices, or a range (int or float, as the key is in params.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choices: list[Scalar] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False  # sample the range log-uniformly
    step: float | None = None  # the range's grid step (not with log)

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError("give either choices: [...] or low: and high:")
        if self.choices is not None:
            if not self.choices or len(set(map(json.dumps, self.choices))) != len(self.choices):
                raise ValueError("choices must be a non-empty list without repeats")
            if self.log or self.step is not None:
                raise ValueError("log and step apply to a range (low, high), not to choices")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a range needs low < high (got low {self.low}, high {self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self


class SamplerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = Field(0, ge=0)
    n_startup_trials: int = Field(5, ge=0, description="tpe: random trials before the model guides the search")


class SeedRepeats(BaseModel):
    """Train every trial once per seed: its value is their mean, its std their standard error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    param: str = "train.seed"
    values: list[int] = Field(..., min_length=1)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                       description="the study's name; it also names the DVC experiments <study>-t<number>")
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite:///<project>/sweeps.db)")
    metric: str | None = Field(None, description="the reports/eval.json metric to minimise (default: its primary one)")
    trials: int = Field(..., ge=1, le=10_000, description="trials that complete, are pruned or fail")
    workers: int = Field(1, ge=1, le=1024, description="trials at once on this machine (--workers overrides)")
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    fixed: dict[str, Scalar] = {}
    space: dict[str, Dimension] = Field(..., min_length=1)
    seeds: SeedRepeats | None = None
    enqueue: list[dict[str, Scalar]] = Field([], description="points tried first, e.g. today's defaults")
    register_best: bool = Field(True, alias="register", description="register the best trial (the champion gate decides "
                                "its alias)")

    @classmethod
    def load(cls, path: Path) -> SweepSpec:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepError(f"sweep file not found: {path}") from None
        except yaml.YAMLError as error:
            raise SweepError(f"{path} is not valid YAML: {error}") from None
        try:
            return cls.model_validate(raw if raw is not None else {})
        except ValidationError as error:
            lines = [f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in error.errors()]
            raise SweepError(f"invalid sweep file {path}:\n" + "\n".join(lines)) from None

    def searched(self) -> list[str]:
        return list(self.space)

    def identity(self) -> str:
        """What makes two runs of a sweep the same study: the search itself (space, fixed values, seeds,
        metric). The budget, workers, storage, sampler, pruner, queued points and the registration may
        change between resumptions: the trials already run keep their meaning."""
        kept = self.model_dump(mode="json", include={"study", "space", "fixed", "seeds", "metric"})
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]

    # --- against the project's params -------------------------------------------------------------

    def check(self, params: Params) -> None:
        """Every key a leaf of params.yaml, every value one it accepts, the pruner fed by in-training
        evaluations; raises SweepError naming what is wrong."""
        base = params.model_dump(mode="json")
        keys = [*self.space, *self.fixed] + ([self.seeds.param] if self.seeds else [])
        for key in keys:
            _leaf_type(base, key)
        repeated = {k for k in keys if keys.count(k) > 1}
        if repeated:
            raise SweepError(f"{sorted(repeated)}: each key may be in only one of space, fixed and seeds")
        fixed = with_overrides(base, self.fixed, "fixed")
        for key, dim in self.space.items():
            kind = _leaf_type(base, key)
            if dim.choices is not None:
                for choice in dim.choices:
                    with_overrides(fixed, {key: choice}, f"space.{key}")
                continue
            if kind not in (int, float):
                raise SweepError(f"space.{key}: a range needs a number key; {key} is {kind.__name__} (give choices)")
            if kind is int and not all(float(v).is_integer() for v in (dim.low, dim.high, dim.step or 1)):
                raise SweepError(f"space.{key}: {key} is an integer; low, high and step must be whole numbers")
            for bound in (dim.low, dim.high):
                with_overrides(fixed, {key: kind(bound)}, f"space.{key}")
        if self.sampler.name == "grid" and any(dim.choices is None for dim in self.space.values()):
            ranged = [key for key, dim in self.space.items() if dim.choices is None]
            raise SweepError(f"sampler grid needs choices for every key; {ranged} are ranges")
        if self.seeds:
            for seed in self.seeds.values:
                with_overrides(fixed, {self.seeds.param: seed}, "seeds")
        for index, point in enumerate(self.enqueue):
            if set(point) != set(self.space):
                raise SweepError(f"enqueue[{index}] must give every key of space, exactly: {sorted(self.space)}")
            for key, value in point.items():
                dim = self.space[key]
                inside = value in dim.choices if dim.choices is not None else dim.low <= float(value) <= dim.high
                if not inside:
                    raise SweepError(f"enqueue[{index}].{key} = {value!r} lies outside space.{key}")
        if self.pruner.name != "none":
            dim = self.space.get("train.eval_every")
            lowest = (min(dim.choices) if dim.choices is not None else dim.low) if dim else fixed["train"]["eval_every"]
            if not lowest:
                raise SweepError(f"pruner {self.pruner.name} reads the in-training evaluations, but train.eval_every can "
                                 "be 0: set it above 0 (in fixed or params.yaml), or use pruner: {name: none}")

    def suggest(self, trial) -> dict[str, Scalar]:
        """The trial's point of the search space, by Optuna's sampler (types as params.yaml's keys)."""
        base = Params().model_dump(mode="json")
        point: dict[str, Scalar] = {}
        for key, dim in self.space.items():
            if dim.choices is not None:
                point[key] = trial.suggest_categorical(key, dim.choices)
            elif _leaf_type(base, key) is int:
                point[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
            else:
                point[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
        return point

    def grid(self) -> dict[str, list[Scalar]]:
        return {key: list(dim.choices) for key, dim in self.space.items()}


def _leaf_type(tree: dict, key: str) -> type:
    """The type of params.yaml's value at a dotted ``key``; SweepError unless it names one leaf."""
    if not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key):
        raise SweepError(f"{key!r} is not a params.yaml key (section.key, e.g. train.lr_g)")
    section = key.split(".", 1)[0]
    if section in NOT_SEARCHABLE:
        raise SweepError(f"{key}: the {section} section does not change what a trial trains or scores")
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SweepError(f"{key!r} is not a params.yaml key (no {part!r} there; check its spelling)")
        node = node[part]
    if isinstance(node, dict):
        raise SweepError(f"{key!r} is a section of params.yaml; name one of its keys")
    if isinstance(node, list):
        raise SweepError(f"{key!r} holds a list; only single values can be searched")
    return type(node) if node is not None else str


def with_overrides(tree: dict, overrides: dict[str, Scalar], where: str) -> dict:
    """``tree`` (params as plain data) with dotted ``overrides`` set, validated as ganops' params."""
    out = json.loads(json.dumps(tree))
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SweepError(f"{where}: {key} = {value} is not a finite number")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        validate_params(out, where)
    except GanopsError as error:
        raise SweepError(str(error)) from None
    return out
