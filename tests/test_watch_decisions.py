"""The watch's decisions, each at its boundary (unit tier): which snapshots are kept (ties go to the later
step), the new best beyond noise exactly at the bar and just past it, the divergence and patience rules
at their thresholds and the reasons they give, the state that a resumed run reloads, and the choice of
the shipped snapshot (every branch: nothing kept, the last within noise, only one finite snapshot,
none, no re-scorer, a non-finite re-score, the lowest on fresh seeds and its tie at the bar)."""

import logging
import math

import pytest
import torch

from ganops import GanopsError
from ganops.training.watch import Choice, choose_snapshot, cpu_weights, finite_weights
from scripted_snapshots import METRIC, SAMPLES, ScriptedRescore, Weights, feed, load_tagged, tagged_weights, watch

weights = tagged_weights


# --- observe: what is kept, the best, and the stopping rules ----------------------------------------------


def test_equal_scores_keep_the_later_snapshot_and_only_kept_weights_are_copied():
    w, made = watch(keep_best=1), Weights()
    assert feed(w, [(10, 30.0, 1.0), (20, 30.0, 1.0), (30, 31.0, 1.0)], made) == ""
    assert list(w.kept) == [20] and torch.equal(w.kept[20]["w"], weights(20)["w"])
    assert made.calls == [10, 20]  # step 30 ranks below the kept one: its weights are never copied
    entry = w.history[0]
    assert entry == {"step": 10, "value": 30.0, "std": 1.0, "samples": SAMPLES} and entry["samples"] is SAMPLES


def test_a_new_best_must_be_lower_beyond_noise_exactly_at_the_bar_is_not():
    # noise_z 2 x hypot(4, 3) = 10: 20 (std 3) against 30 (std 4) is exactly at the bar, 19.5 beyond it
    w = watch(keep_best=3)
    feed(w, [(10, 30.0, 4.0)])
    assert w.best_step == 10  # the first evaluation is the best
    feed(w, [(20, 20.0, 3.0)])
    assert w.best_step == 10 and sorted(w.kept) == [10, 20]
    feed(w, [(30, 19.5, 3.0)])
    assert w.best_step == 30 and sorted(w.kept) == [10, 20, 30]
    assert w.at(20) == {"step": 20, "value": 20.0, "std": 3.0, "samples": SAMPLES} and w.at(25) is None


def test_divergence_is_judged_against_the_lowest_score_strictly_above_the_factor():
    w = watch(keep_best=2, diverge_factor=3.0)
    assert feed(w, [(10, 20.0, 1.0), (20, 40.0, 1.0), (30, 60.0, 1.0)]) == ""  # exactly 3 x 20: goes on
    reason = feed(w, [(40, 60.5, 1.0)])
    assert reason == ("step 40: diverged, the in-training fid8_tf_train 60.5 is above 3 x its best 20 (step 10)")
    assert w.stopped == reason


def test_patience_stops_at_exactly_patience_evaluations_after_the_best_with_its_reason():
    w = watch(patience=3)
    assert feed(w, [(10, 50.0, 1.0), (20, 40.0, 1.0), (30, 40.0, 1.0), (40, 40.0, 1.0)]) == ""  # two since 20
    reason = feed(w, [(50, 40.0, 1.0)])
    assert reason == "step 50: no new best beyond noise in 3 evaluations since step 20 (train.early_stop_patience)"
    assert w.stopped == reason


@pytest.mark.parametrize("value, std, shown", [(math.nan, 1.0, "(nan, std 1.0)"), (10.0, math.inf, "(10.0, std inf)"),
                                               (-math.inf, 2.0, "(-inf, std 2.0)")])
def test_a_non_finite_score_or_std_alone_stops_the_run_and_is_not_recorded(value, std, shown):
    w = watch()
    reason = feed(w, [(10, 40.0, 1.0), (20, value, std)])
    assert reason == f"step 20: the in-training fid8_tf_train is not finite {shown}" and w.stopped == reason
    assert [e["step"] for e in w.history] == [10] and list(w.kept) == [10]


def test_rows_round_to_six_decimals_and_name_the_metric():
    w = watch()
    feed(w, [(10, 12.34567891, 0.123456789)])
    assert w.rows() == [{"step": 10, "metric": METRIC, "value": 12.345679, "std": 0.123457}]


def test_the_state_a_resumed_run_reloads_is_the_same_watch():
    w = watch(keep_best=2, patience=5)
    feed(w, [(10, 30.0, 1.0), (20, 20.0, 1.0), (30, 25.0, 1.0)])
    w.stopped = "step 30: stopped"
    state = w.state_dict()
    assert set(state) == {"history", "kept", "best_step", "stopped"} and sorted(state["kept"]) == ["20", "30"]
    assert state["best_step"] == 20 and state["stopped"] == "step 30: stopped" and state["history"] == w.history
    again = watch(keep_best=2, patience=5)
    again.load_state_dict(state)
    assert again.history == w.history and again.history[0] is not w.history[0]  # copied entries
    assert sorted(again.kept) == [20, 30] and torch.equal(again.kept[30]["w"], weights(30)["w"])
    assert (again.best_step, again.stopped) == (20, "step 30: stopped")
    assert feed(again, [(40, 19.0, 1.0)]) == "step 30: stopped" and sorted(again.kept) == [20, 40]


def test_finite_weights_ignore_integer_buffers_and_cpu_weights_are_copies():
    assert finite_weights(weights(1.0)) and not finite_weights({"w": torch.tensor([0.0, math.inf])})
    module = torch.nn.Linear(2, 1)
    copied = cpu_weights(module)
    before = copied["weight"].clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    assert torch.equal(copied["weight"], before) and copied["weight"].device.type == "cpu"
    assert set(copied) == {"weight", "bias"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: on the CPU the copy stays where it is")
def test_cpu_weights_of_a_gpu_module_are_on_the_cpu():
    copied = cpu_weights(torch.nn.Linear(2, 1).to("cuda"))
    assert {t.device.type for t in copied.values()} == {"cpu"}


# --- choose_snapshot -----------------------------------------------------------------------------------


def test_without_a_kept_snapshot_the_last_ships_as_it_is():
    last = weights(40)
    for w in (None, watch()):  # no watch, or one that has evaluated nothing yet
        choice = choose_snapshot(w, 40, last, None, load_tagged)
        assert choice == Choice(40, last, "the last step (no in-training evaluation kept a snapshot)", [])
        assert choice.weights is last
    with pytest.raises(GanopsError, match=r"^training went non-finite by step 40 and no earlier snapshot was kept "
                                          r"\(set train.eval_every to keep the best ones\); nothing to ship$"):
        choose_snapshot(None, 40, {"w": torch.tensor([math.nan])}, None, load_tagged)


def test_the_last_within_noise_of_every_kept_one_ships_without_re_scoring():
    w = watch(keep_best=2)
    feed(w, [(10, 40.0, 1.0), (20, 30.0, 1.0), (30, 32.0, 1.0)])  # 30 vs 32: within 2 x hypot(1, 1)
    last = weights(30)
    choice = choose_snapshot(w, 30, last, ScriptedRescore({}), load_tagged)
    assert (choice.step, choice.reason) == (30, "the last step: no kept snapshot beat it in training beyond noise")
    assert choice.weights is last
    assert choice.candidates == [{"step": 30, "in_training": 32.0, "in_training_std": 1.0}]


def test_a_last_step_never_evaluated_is_re_scored_against_every_kept_one(caplog):
    w = watch(keep_best=1)
    feed(w, [(10, 30.0, 1.0)])
    rescore = ScriptedRescore({10.0: (25.0, 0.5), 15.0: (24.0, 0.25)})
    with caplog.at_level(logging.INFO, logger="ganops.training.watch"):
        choice = choose_snapshot(w, 15, weights(15), rescore, load_tagged)
    assert choice.step == 15 and rescore.calls == [10.0, 15.0]
    assert choice.candidates == [
        {"step": 10, "in_training": 30.0, "in_training_std": 1.0, "rescored": 25.0, "rescored_std": 0.5},
        {"step": 15, "in_training": None, "in_training_std": None, "rescored": 24.0, "rescored_std": 0.25}]
    assert [r.getMessage() for r in caplog.records] == [
        "snapshot of step 10: fid2k_tf_train 25.0000 (std 0.5000) on fresh seeds",
        "snapshot of step 15: fid2k_tf_train 24.0000 (std 0.2500) on fresh seeds"]


def test_a_non_finite_last_leaves_the_only_finite_kept_snapshot_or_nothing():
    w = watch(keep_best=1)
    feed(w, [(10, 20.0, 1.0), (20, 25.0, 1.0)])
    nan_last = {"w": torch.tensor([math.nan, 0.0]), "n": torch.tensor([1])}
    choice = choose_snapshot(w, 20, nan_last, None, load_tagged)
    assert (choice.step, choice.reason) == (10, "step 10: the only finite snapshot kept")
    assert choice.weights is w.kept[10] and choice.candidates == [{"step": 10, "in_training": 20.0, "in_training_std": 1.0}]
    only_last = watch(keep_best=1)
    feed(only_last, [(10, 20.0, 1.0)])
    with pytest.raises(GanopsError, match=r"^training went non-finite by step 10 and no finite snapshot was kept; "
                                          r"nothing to ship$"):
        choose_snapshot(only_last, 10, nan_last, None, load_tagged)


def test_choosing_between_snapshots_needs_a_re_scorer_and_finite_re_scores():
    w = watch(keep_best=1)
    feed(w, [(10, 20.0, 1.0), (20, 40.0, 1.0)])
    with pytest.raises(GanopsError, match=r"^choosing between snapshots needs a re-scorer$"):
        choose_snapshot(w, 20, weights(20), None, load_tagged)
    for value, std in ((math.nan, 1.0), (1.0, math.inf)):
        with pytest.raises(GanopsError, match=r"^re-scoring the snapshot of step 20 gave a non-finite fid2k_tf_train$"):
            choose_snapshot(w, 20, weights(20), ScriptedRescore({10.0: (5.0, 1.0), 20.0: (value, std)}), load_tagged)


def test_the_lowest_re_score_ships_and_a_later_one_exactly_at_the_bar_takes_its_place():
    w = watch(keep_best=2)
    feed(w, [(10, 20.0, 1.0), (20, 21.0, 1.0), (30, 40.0, 1.0)])  # 10 and 20 beat the last (40) in training
    # noise_z 2 x hypot(3, 4) = 10: step 20 at 30 (std 4) is exactly at the bar from step 10's 20 (std 3)
    at_bar = ScriptedRescore({10.0: (20.0, 3.0), 20.0: (30.0, 4.0), 30.0: (45.0, 4.0)})
    choice = choose_snapshot(w, 30, weights(30), at_bar, load_tagged)
    assert choice.step == 20 and torch.equal(choice.weights["w"], weights(20)["w"])
    assert choice.reason == "step 20: within noise of the lowest fid2k_tf_train on fresh seeds (step 10), and later"
    beyond = ScriptedRescore({10.0: (20.0, 3.0), 20.0: (30.5, 4.0), 30.0: (45.0, 4.0)})
    choice = choose_snapshot(w, 30, weights(30), beyond, load_tagged)
    assert choice.step == 10 and choice.weights is w.kept[10]
    assert choice.reason == "step 10: the lowest fid2k_tf_train on fresh seeds"
    assert [(c["step"], c["rescored"], c["rescored_std"]) for c in choice.candidates] == [
        (10, 20.0, 3.0), (20, 30.5, 4.0), (30, 45.0, 4.0)]
    # the lowest in the middle: the later step within noise of it ships, the earlier one does not
    middle = ScriptedRescore({10.0: (30.0, 1.0), 20.0: (20.0, 1.0), 30.0: (21.0, 1.0)})
    choice = choose_snapshot(w, 30, weights(30), middle, load_tagged)
    assert choice.step == 30 and "(step 20), and later" in choice.reason
