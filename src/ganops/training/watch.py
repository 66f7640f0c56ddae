"""Quality watched during training, and the snapshot to ship chosen without fooling itself.

Every train.eval_every steps the loop hands the EMA generator to a scorer that the train stage built
(this package does not import ganops.metrics): an in-training FID on few images, the same seeds at
every snapshot. ``Watch`` keeps that history, the EMA weights of the train.keep_best lowest scores,
and decides when the run is over. The minimum of noisy scores is biased low (the winner's curse), so
``choose_snapshot`` re-scores the kept snapshots and the last one on fresh seeds with the full
protocol and ships the lowest; the evaluate stage then scores the shipped one on its own seeds.

"Beyond noise" (``ganops.noise.beyond_noise``): lower by more than train.noise_z standard deviations
of the difference, the two scores' half-sample stds added in quadrature (only the generated images
vary between snapshots of one run: they are all scored against the same reference).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ganops import GanopsError
from ganops.noise import beyond_noise

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What the train stage hands the loop: a named metric of a generator, lower is better."""

    name: str  # the metric's name by its protocol, e.g. fid200_tf_train

    def __call__(self, generator: torch.nn.Module) -> tuple[float, float]:
        """(value, std): the score and its standard deviation over half-samples of the generated images."""


def _beyond_noise(lower: dict, higher: dict, noise_z: float) -> bool:
    """Is the evaluation ``lower`` ({"value", "std"}) below ``higher`` beyond noise, at noise_z?"""
    return beyond_noise(lower["value"], lower["std"], higher["value"], higher["std"], noise_z)


def finite_weights(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def cpu_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


@dataclass
class Watch:
    """The in-training evaluations of one run, the snapshots kept, and whether the run is over."""

    metric: str
    keep_best: int
    patience: int  # 0: never stop early for lack of progress
    diverge_factor: float
    noise_z: float
    history: list[dict] = field(default_factory=list)  # {"step", "value", "std", "samples"} per evaluation
    kept: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> EMA weights (CPU)
    best_step: int = -1  # the last evaluation that was a new best beyond noise
    stopped: str = ""  # why the run stopped early ("" while it runs)

    def observe(self, step: int, value: float, std: float, weights: Callable[[], dict[str, torch.Tensor]],
                samples: torch.Tensor) -> str:
        """Record one evaluation; keep its weights if it ranks among the keep_best lowest. Returns why
        the run must stop now, or ""."""
        if not (math.isfinite(value) and math.isfinite(std)):
            self.stopped = f"step {step}: the in-training {self.metric} is not finite ({value}, std {std})"
            return self.stopped
        entry = {"step": step, "value": value, "std": std, "samples": samples}
        self.history.append(entry)
        ranked = sorted(self.history, key=lambda e: (e["value"], -e["step"]))[: self.keep_best]
        if any(e["step"] == step for e in ranked):
            self.kept[step] = weights()
        self.kept = {s: w for s, w in self.kept.items() if any(e["step"] == s for e in ranked)}

        best = self.at(self.best_step)
        if best is None or _beyond_noise(entry, best, self.noise_z):
            self.best_step = step
        lowest = ranked[0]
        if value > self.diverge_factor * lowest["value"]:
            self.stopped = (f"step {step}: diverged, the in-training {self.metric} {value:.4g} is above "
                            f"{self.diverge_factor:g} x its best {lowest['value']:.4g} (step {lowest['step']})")
        elif self.patience and sum(e["step"] > self.best_step for e in self.history) >= self.patience:
            self.stopped = (f"step {step}: no new best beyond noise in {self.patience} evaluations since step "
                            f"{self.best_step} (train.early_stop_patience)")
        return self.stopped

    def at(self, step: int) -> dict | None:
        return next((e for e in self.history if e["step"] == step), None)

    def rows(self) -> list[dict]:
        """The evaluations as plot rows: step, metric name, value, std."""
        return [{"step": e["step"], "metric": self.metric, "value": round(e["value"], 6), "std": round(e["std"], 6)}
                for e in self.history]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "kept": {str(s): w for s, w in self.kept.items()},
                "best_step": self.best_step, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(e) for e in state["history"]]
        self.kept = {int(s): dict(w) for s, w in state["kept"].items()}
        self.best_step, self.stopped = int(state["best_step"]), str(state["stopped"])


@dataclass
class Choice:
    step: int
    weights: dict[str, torch.Tensor]
    reason: str
    candidates: list[dict]  # per candidate: step, in-training value/std, re-scored value/std


def choose_snapshot(watch: Watch | None, last_step: int, last_weights: dict[str, torch.Tensor],
                    rescore: Scorer | None, load: Callable[[dict[str, torch.Tensor]], torch.nn.Module]) -> Choice:
    """The snapshot to ship: the last, unless a kept one beat it in training beyond noise; then each of
    those and the last are re-scored on fresh seeds (``rescore``, the full protocol) and the lowest
    wins, and among those within noise of the lowest the latest step (the rule that keeps the last
    when nothing is clearly better). A non-finite last snapshot is never a candidate."""
    last_ok = finite_weights(last_weights)
    if watch is None or not watch.kept:
        if not last_ok:
            raise GanopsError(f"training went non-finite by step {last_step} and no earlier snapshot was kept "
                              "(set train.eval_every to keep the best ones); nothing to ship")
        return Choice(last_step, last_weights, "the last step (no in-training evaluation kept a snapshot)", [])
    last_eval = watch.at(last_step) if last_ok else None
    contenders = sorted(s for s in watch.kept if s != last_step and (
        not last_ok or last_eval is None or _beyond_noise(watch.at(s), last_eval, watch.noise_z)))
    pool = {s: watch.kept[s] for s in contenders}
    if last_ok:
        pool[last_step] = last_weights
    if not pool:
        raise GanopsError(f"training went non-finite by step {last_step} and no finite snapshot was kept; nothing to ship")
    candidates = [{"step": s, "in_training": watch.at(s)["value"] if watch.at(s) else None,
                   "in_training_std": watch.at(s)["std"] if watch.at(s) else None} for s in sorted(pool)]
    if len(pool) == 1:
        (step,) = pool
        reason = ("the last step: no kept snapshot beat it in training beyond noise" if step == last_step else
                  f"step {step}: the only finite snapshot kept")
        return Choice(step, pool[step], reason, candidates)
    if rescore is None:
        raise GanopsError("choosing between snapshots needs a re-scorer")
    for candidate in candidates:
        value, std = rescore(load(pool[candidate["step"]]))
        if not (math.isfinite(value) and math.isfinite(std)):
            raise GanopsError(f"re-scoring the snapshot of step {candidate['step']} gave a non-finite {rescore.name}")
        candidate.update(rescored=value, rescored_std=std)
        log.info("snapshot of step %d: %s %.4f (std %.4f) on fresh seeds", candidate["step"], rescore.name, value, std)
    lowest = min(candidates, key=lambda c: c["rescored"])
    tied = [c for c in candidates if not beyond_noise(lowest["rescored"], lowest["rescored_std"], c["rescored"],
                                                      c["rescored_std"], watch.noise_z)]
    chosen = max(tied, key=lambda c: c["step"])
    reason = (f"step {chosen['step']}: the lowest {rescore.name} on fresh seeds" if chosen is lowest else
              f"step {chosen['step']}: within noise of the lowest {rescore.name} on fresh seeds (step "
              f"{lowest['step']}), and later")
    return Choice(chosen["step"], pool[chosen["step"]], reason, candidates)
