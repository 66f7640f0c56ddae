"""Quality watched during training: the Watch's bookkeeping and stopping rules, the choice of the
shipped snapshot, and fit with a scripted scorer (the loop imports no metrics)."""

import math

import numpy as np
import pytest
import torch

from conftest import tiny
from ganops import GanopsError
from ganops.training.watch import choose_snapshot
from scripted_snapshots import ScriptedRescore, feed, load_tagged, tagged_weights, watch

weights = tagged_weights


def test_the_watch_keeps_the_lowest_scores_weights():
    w = watch(keep_best=2)
    assert feed(w, [(10, 50.0, 1.0), (20, 30.0, 1.0), (30, 40.0, 1.0), (40, 35.0, 1.0), (50, 29.0, 1.0)]) == ""
    assert sorted(w.kept) == [20, 50] and torch.equal(w.kept[50]["w"], weights(50)["w"])
    assert [row["step"] for row in w.rows()] == [10, 20, 30, 40, 50] and w.rows()[1]["metric"] == "fid8_tf_train"
    assert w.best_step == 20  # 29 is not below 30 beyond 2 x hypot(1, 1)


def test_patience_counts_evaluations_without_a_new_best_beyond_noise():
    w = watch(patience=2)
    assert feed(w, [(10, 50.0, 1.0), (20, 40.0, 1.0), (30, 39.0, 1.0)]) == ""  # 39: within noise of 40
    reason = feed(w, [(40, 38.5, 1.0)])
    assert reason.startswith("step 40: no new best beyond noise in 2 evaluations since step 20")
    assert w.stopped == reason and sorted(w.kept) == [40]
    assert feed(watch(patience=2), [(10, 50.0, 1.0), (20, 40.0, 1.0), (30, 30.0, 1.0), (40, 20.0, 1.0)]) == ""
    assert feed(watch(patience=0), [(s, 50.0, 1.0) for s in range(10, 200, 10)]) == ""  # 0: never for that


def test_divergence_and_non_finite_scores_stop_the_run():
    w = watch()
    assert feed(w, [(10, 40.0, 1.0), (20, 20.0, 1.0), (30, 59.0, 1.0)]) == ""
    assert feed(w, [(40, 61.0, 1.0)]).startswith("step 40: diverged, the in-training fid8_tf_train 61 is above 3 x its best 20")
    for value, std in ((math.nan, 1.0), (math.inf, 1.0), (10.0, math.nan)):
        stopped = watch()
        assert "not finite" in feed(stopped, [(10, 40.0, 1.0), (20, value, std)])
        assert [row["step"] for row in stopped.rows()] == [10]  # the non-finite score is not kept


def test_the_last_ships_unless_a_kept_snapshot_beat_it_in_training_beyond_noise():
    w = watch(keep_best=2)
    feed(w, [(10, 50.0, 1.0), (20, 30.0, 1.0), (30, 31.0, 1.0)])
    rescore = ScriptedRescore({})
    choice = choose_snapshot(w, 30, weights(30), rescore, load_tagged)
    assert (choice.step, rescore.calls) == (30, []) and "no kept snapshot beat it" in choice.reason
    assert [c["step"] for c in choice.candidates] == [30]


def test_fresh_seeds_decide_and_ties_go_to_the_later_step():
    w = watch(keep_best=2)
    feed(w, [(10, 20.0, 1.0), (20, 21.0, 1.0), (30, 40.0, 1.0)])  # 10 and 20 beat the last (40)
    rescore = ScriptedRescore({10.0: (25.0, 1.0), 20.0: (22.0, 1.0), 30.0: (41.0, 1.0)})
    choice = choose_snapshot(w, 30, weights(30), rescore, load_tagged)
    assert choice.step == 20 and sorted(rescore.calls) == [10.0, 20.0, 30.0]
    assert torch.equal(choice.weights["w"], weights(20)["w"])
    assert [(c["step"], c["rescored"]) for c in choice.candidates] == [(10, 25.0), (20, 22.0), (30, 41.0)]
    assert choice.reason == "step 20: the lowest fid2k_tf_train on fresh seeds"
    tie = ScriptedRescore({10.0: (21.0, 1.0), 20.0: (22.0, 1.0), 30.0: (41.0, 1.0)})  # 10 lowest, 20 within noise
    choice = choose_snapshot(w, 30, weights(30), tie, load_tagged)
    assert choice.step == 20 and "within noise of the lowest" in choice.reason


def test_a_non_finite_last_snapshot_is_never_shipped():
    w = watch(keep_best=1)
    feed(w, [(10, 20.0, 1.0), (20, 19.5, 1.0)])
    nan_last = {"w": torch.tensor([math.nan, 0.0])}
    choice = choose_snapshot(w, 25, nan_last, ScriptedRescore({}), load_tagged)
    assert choice.step == 20 and "only finite snapshot" in choice.reason
    with pytest.raises(GanopsError, match="no earlier snapshot was kept"):
        choose_snapshot(None, 25, nan_last, None, load_tagged)
    with pytest.raises(GanopsError, match="non-finite fid2k_tf_train"):
        w2 = watch(keep_best=1)
        feed(w2, [(10, 20.0, 1.0), (20, 40.0, 1.0)])
        choose_snapshot(w2, 20, weights(20), ScriptedRescore({10.0: (math.nan, 1.0), 20.0: (1.0, 1.0)}), load_tagged)


# --- fit with a scripted scorer --------------------------------------------------------------------------


class StepScorer:
    """Scores by how many times it was called: a scripted curve, whatever the generator."""

    name = "fid64_tf_train"

    def __init__(self, curve: list[float]) -> None:
        self.curve, self.calls = curve, 0

    def __call__(self, generator) -> tuple[float, float]:
        value = self.curve[self.calls]
        self.calls += 1
        return value, 0.1


class WeightRescore:
    """The re-scorer: lower for the generator whose weights match a given snapshot."""

    name = "fid200_tf_train"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, generator) -> tuple[float, float]:
        self.seen.append(torch.cat([p.detach().flatten() for p in generator.parameters()]).clone())
        return float(len(self.seen)), 0.1  # the first re-scored (the earliest step) is the lowest


@pytest.fixture(scope="module")
def prepared(tiny_prepared):
    """The digits prepared with TINY (conftest's shared project: fit only reads it)."""
    return tiny_prepared


def _fit(prepared, tmp_path, steps: int, score=None, rescore=None, **train):
    from ganops.data import load_manifest, open_split
    from ganops.stages.train import discriminator_spec, generator_spec
    from ganops.training.loop import Scoring, TrainingJob, fit

    params = tiny({"train": {"steps": steps, "eval_every": 5, "keep_best": 1, **train}})
    manifest = load_manifest(prepared / "data" / "prepared")
    images = open_split(prepared / "data" / "prepared", "train")
    return fit(TrainingJob(generator_spec(params.model, manifest), discriminator_spec(params.model, manifest), params.train,
                           "none", images, images.labels, tmp_path / "checkpoints"), Scoring(score, rescore))


@pytest.mark.stage
def test_fit_ships_the_snapshot_the_scores_chose_and_evaluations_do_not_change_training(prepared, tmp_path):
    """Scripted in-training scores put the best at step 10 of 20: the shipped generator is exactly the
    EMA generator of a plain 10-step run (so scoring did not disturb training), and the last step's
    weights, not shipped, are those of a plain 20-step run."""
    result = _fit(prepared, tmp_path / "watched", 20, StepScorer([30.0, 10.0, 25.0, 28.0]), WeightRescore())
    plain10 = _fit(prepared, tmp_path / "plain10", 10)
    plain20 = _fit(prepared, tmp_path / "plain20", 20)
    shipped = {k: v for k, v in result.G_ema.state_dict().items()}
    assert result.summary.chosen_step == 10 and [c.step for c in result.summary.candidates] == [10, 20]
    assert all(torch.equal(shipped[k], v) for k, v in plain10.G_ema.state_dict().items())
    assert result.summary.weights_sha256 == plain20.summary.weights_sha256
    assert result.summary.generator_sha256 == plain10.summary.generator_sha256 != plain20.summary.generator_sha256
    assert [row["step"] for row in result.watch_rows] == [5, 10, 15, 20] and len(result.previews) == 4
    assert result.previews[0][1].shape == (10 * 8, 1, 8, 8) and result.previews[0][1].dtype == np.uint8
    assert plain20.summary.chosen_step == 20 and plain20.watch_rows == []


@pytest.mark.stage
def test_fit_stops_on_divergence_and_ships_the_best(prepared, tmp_path):
    result = _fit(prepared, tmp_path, 40, StepScorer([30.0, 10.0, 31.0, 9.0]), WeightRescore())
    assert result.summary.steps_done == 15 and result.summary.stopped_early.startswith("step 15: diverged")
    assert result.summary.chosen_step == 10
    again = _fit(prepared, tmp_path, 40, StepScorer([]), WeightRescore())  # resumes the stopped run: no step, no score
    assert again.summary.steps_done == 15 and again.summary.generator_sha256 == result.summary.generator_sha256


@pytest.mark.stage
def test_fit_stops_on_non_finite_losses(prepared, tmp_path, monkeypatch):
    """The step's stats turn NaN from step 12 on (the loop reads them every log_every = 5 steps): the run
    stops at 15 and ships its best snapshot; without a kept snapshot it fails, naming the step."""
    from ganops.training import step as step_module

    real_run = step_module.TrainStep.run
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        stats = real_run(self)
        return stats * math.nan if calls["n"] >= 12 else stats

    monkeypatch.setattr(step_module.TrainStep, "run", poisoned)
    result = _fit(prepared, tmp_path / "watched", 40, StepScorer([30.0, 10.0, 31.0]), WeightRescore())
    assert result.summary.steps_done == 15 and "non-finite losses" in result.summary.stopped_early
    assert result.summary.chosen_step == 10  # the last (15) was not scored: the best kept one ships
    # train.json can still be written: its losses are the last finite row's (step 10), not NaN
    assert [row["step"] for row in result.log_rows] == [5, 10, 15] and math.isnan(result.log_rows[-1]["loss_d"])
    assert result.summary.loss_d == result.log_rows[1]["loss_d"] and math.isfinite(result.summary.loss_g)
    calls["n"] = 0
    unwatched = _fit(prepared, tmp_path / "plain", 40, eval_every=0)
    assert unwatched.summary.stopped_early.startswith("step 15: non-finite losses")
