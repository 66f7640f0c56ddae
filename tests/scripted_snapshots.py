"""A Watch fed scripted scores, snapshots a test can tell apart, and a re-scorer that scores them from a
table (the tests of ``Watch`` and ``choose_snapshot``)."""

from __future__ import annotations

import torch

from ganops.training.watch import Watch

SAMPLES = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
METRIC = "fid8_tf_train"


def tagged_weights(tag: float) -> dict[str, torch.Tensor]:
    """The weights of the snapshot tagged ``tag`` (its step, in these tests): every float weight equals the tag."""
    return {"w": torch.full((2,), float(tag)), "n": torch.tensor([1], dtype=torch.int64)}


class TaggedGenerator(torch.nn.Module):
    """A module that loads ``tagged_weights``: a float buffer and an integer one, as a generator's batch norm has."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(2))
        self.register_buffer("n", torch.zeros(1, dtype=torch.int64))


def load_tagged(state: dict[str, torch.Tensor]) -> TaggedGenerator:
    generator = TaggedGenerator()
    generator.load_state_dict(state)
    return generator


class ScriptedRescore:
    """A snapshot re-scorer that answers (value, std) from ``by_tag`` and records the tags it was asked for."""

    def __init__(self, by_tag: dict[float, tuple[float, float]], name: str = "fid2k_tf_train") -> None:
        self.by_tag, self.name, self.calls = by_tag, name, []

    def __call__(self, generator: TaggedGenerator) -> tuple[float, float]:
        tag = float(generator.w[0])
        self.calls.append(tag)
        return self.by_tag[tag]


def watch(**overrides) -> Watch:
    settings = {"metric": METRIC, "keep_best": 1, "patience": 0, "diverge_factor": 3.0, "noise_z": 2.0}
    return Watch(**{**settings, **overrides})


class Weights:
    """The weights callable the loop hands ``observe``: counts its calls (weights are copied only when kept)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, step: int):
        def make() -> dict[str, torch.Tensor]:
            self.calls.append(step)
            return tagged_weights(step)
        return make


def feed(w: Watch, scores: list[tuple[int, float, float]], made: Weights | None = None) -> str:
    """``observe`` each (step, value, std) in turn, until one stops the run; returns its reason ("" if none)."""
    made = made or Weights()
    reason = ""
    for step, value, std in scores:
        reason = w.observe(step, value, std, made(step), SAMPLES)
        if reason:
            break
    return reason
