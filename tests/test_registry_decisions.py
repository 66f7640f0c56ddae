"""The registry's decisions, each at its boundary and at the point where it is made (issue 39, item 2).

- the champion gate (``_decide``): an exact tie at zero noise is not promoted, the smallest win beyond
  ``min_improvement`` is; one std of the difference either side of ``noise_z``; the per-class gate's
  tie, its side and its Bonferroni z;
- "evaluations are comparable" (``evaluation_signature``): one case per thing it compares;
- the registry locks: a lease at its expiry is live, just after it is taken over; the fence
  (``check_held``) refuses after a take-over and with too little of the lease left;
- rollback across an inconsistent history: the alias against the history tag (and a promotion on top
  of one), versions without their evaluation's tags, versions deleted since.

Unit tier: ``_decide`` is called with the champion as the registry returns it (tags as strings), the
server lock on an in-memory registry that answers as MLflow's stores do, the lock file on tmp_path.
Rollback runs on a real embedded sqlite store, made once for the module: its tables take seconds to
create, so those tests carry the ``stage`` marker.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

import filelock
import pytest

from ganops import GanopsError
from ganops.config import MlflowParams, RegisterParams
from ganops.metrics.report import EvaluationReport
from ganops.noise import bonferroni_z
from ganops.tracking import registry
from ganops.tracking.registry import (
    CHAMPION,
    HISTORY_TAG,
    FileRegistryLock,
    LockLost,
    RegistryLock,
    _champion,
    _decide,
    evaluation_signature,
    promote,
    rollback,
)
from ganops.tracking.store import TrackingError

SIGNATURE = "0123456789abcdef"


def gate(**changes) -> RegisterParams:
    return RegisterParams(**changes)


def champion(value: float, std: float | None, signature: str = SIGNATURE, per_class: dict | None = None,
             version: str = "1"):
    """The champion version as the registry returns it: every tag a string, as register_onnx wrote it."""
    tags = {"metric": "fid10k_tf_test", "metric_value": str(float(value)), "eval_signature": signature,
            "classes": str(len(per_class or {})), "per_class": json.dumps(per_class or {})}
    if std is not None:
        tags["metric_std"] = str(float(std))
    return SimpleNamespace(version=version, tags=tags)


def candidate(value: float, std: float | None, signature: str = SIGNATURE, per_class: dict | None = None) -> dict:
    """register_onnx's ``new``: what this version's evaluation says."""
    return {"metric": "fid10k_tf_test", "metric_value": float(value), "metric_std": None if std is None else float(std),
            "eval_signature": signature, "classes": len(per_class or {}), "per_class": json.dumps(per_class or {})}


# --- the champion gate: ties, margins and one std either side -------------------------------------------


def test_an_exact_tie_at_zero_noise_is_not_promoted():
    for noise_z in (1.96, 0.0):  # with z 0 too: nothing but the difference itself decides
        promoted, reason = _decide(gate(noise_z=noise_z), candidate(10.0, 0.0), champion(10.0, 0.0))
        assert promoted is False, reason
        assert "improvement 0.0000 <= required 0.0000" in reason


def test_the_smallest_win_at_zero_noise_is_promoted():
    below = math.nextafter(10.0, 0.0)  # lower by one ulp: with no noise, any gain counts
    promoted, reason = _decide(gate(), candidate(below, 0.0), champion(10.0, 0.0))
    assert promoted is True, reason
    assert "<= required" not in reason and "> required 0.0000" in reason


def test_the_smallest_win_beyond_min_improvement_at_zero_noise_is_promoted():
    strict = gate(min_improvement=0.5)
    at_margin, reason = _decide(strict, candidate(9.5, 0.0), champion(10.0, 0.0))  # gain exactly 0.5
    assert at_margin is False and "improvement 0.5000 <= required 0.5000" in reason, reason
    just_beyond = math.nextafter(9.5, 0.0)
    assert 10.0 - just_beyond > 0.5  # the gain is one ulp beyond the margin, not rounded back onto it
    promoted, reason = _decide(strict, candidate(just_beyond, 0.0), champion(10.0, 0.0))
    assert promoted is True, reason


def test_one_std_of_the_difference_either_side_of_noise_z():
    # stds 3 (this version) and 4 (the champion's tag): the difference's std is 5, at z 2 the bar is exactly 10
    cfg = gate(noise_z=2.0)
    at_bar, reason = _decide(cfg, candidate(20.0, 3.0), champion(30.0, 4.0))
    assert at_bar is False and "improvement 10.0000 <= required 10.0000" in reason, reason
    beyond, reason = _decide(cfg, candidate(math.nextafter(20.0, 0.0), 3.0), champion(30.0, 4.0))
    assert beyond is True, reason
    # each side's std counts in full, alone: 2 x 5 = 10 either way
    for ours, theirs in ((0.0, 5.0), (5.0, 0.0)):
        promoted, reason = _decide(cfg, candidate(20.0, ours), champion(30.0, theirs))
        assert promoted is False and "required 10.0000" in reason, (ours, theirs, reason)
        promoted, reason = _decide(cfg, candidate(math.nextafter(20.0, 0.0), ours), champion(30.0, theirs))
        assert promoted is True, (ours, theirs, reason)


def test_the_margin_and_the_noise_each_decide_where_they_are_the_larger():
    # noise 2 x 5 = 10 above a margin of 4: 9 of gain is refused; margin 12 above the noise: 11 is refused
    refused, reason = _decide(gate(noise_z=2.0, min_improvement=4.0), candidate(21.0, 3.0), champion(30.0, 4.0))
    assert refused is False and "required 10.0000" in reason, reason
    refused, reason = _decide(gate(noise_z=2.0, min_improvement=12.0), candidate(19.0, 3.0), champion(30.0, 4.0))
    assert refused is False and "required 12.0000" in reason, reason
    promoted, reason = _decide(gate(noise_z=2.0, min_improvement=12.0), candidate(17.5, 3.0), champion(30.0, 4.0))
    assert promoted is True, reason


def test_the_first_version_is_promoted_with_no_champion_to_beat():
    assert _decide(gate(), candidate(50.0, None), None) == (True, "first registered version: no champion yet")


def test_a_version_not_comparable_says_how_each_side_was_judged():
    domain = {**candidate(1.0, 0.0, signature="bbbbbbbbbbbbbbbb"), "metric": "fd10k_domain_test"}
    promoted, reason = _decide(gate(), domain, champion(50.0, 0.0, signature="aaaaaaaaaaaaaaaa", version="7"))
    assert promoted is False
    assert reason.startswith("not comparable with champion v7: it was judged by fid10k_tf_test (signature "
                             "aaaaaaaaaaaaaaaa), this version by fd10k_domain_test (signature bbbbbbbbbbbbbbbb)"), reason


@pytest.mark.parametrize("old", ["nan", "inf"])
def test_a_champion_whose_metric_is_not_a_finite_number_is_replaced(old):
    broken = champion(30.0, None, version="3")  # registered before non-finite metrics were refused, with no std
    broken.tags["metric_value"] = old
    promoted, reason = _decide(gate(), candidate(12.0, None), broken)
    assert (promoted, reason) == (True, f"champion v3's fid10k_tf_test is {old}, not a finite number: "
                                        "fid10k_tf_test 12.0000 replaces it")


@pytest.mark.parametrize(("ours", "theirs", "missing"), [
    (None, 1.0, "this version's evaluation has no fid10k_tf_test_std"),
    (1.0, None, "champion v1 has no metric_std"),
    (None, None, "this version's evaluation has no fid10k_tf_test_std and champion v1 has no metric_std"),
], ids=["this-version", "champion", "both"])
def test_a_missing_std_on_either_side_is_never_taken_as_zero(ours, theirs, missing):
    # far better (0.001 against 50): with any std at all it would be promoted
    promoted, reason = _decide(gate(), candidate(0.001, ours), champion(50.0, theirs))
    assert promoted is False
    assert reason == (f"fid10k_tf_test 0.0010 vs champion v1 50.0000: the noise cannot be judged, {missing} (a missing "
                      f"std is never taken as 0): not promoted; {registry.GET_INTERVALS}")


def _bare(new: dict, **tags: str | None) -> tuple[dict, SimpleNamespace]:
    """``new`` and a champion 10 worse (no noise): only the per-class tags (None: absent) decide."""
    version = champion(30.0, 0.0)
    for key, value in tags.items():
        version.tags.pop(key)
        if value is not None:
            version.tags[key] = value
    return {**candidate(20.0, 0.0), **new}, version


@pytest.mark.parametrize(("new", "tags"), [
    ({"per_class": '{"a": [5.0, 0.0]}'}, {}),  # this version's per-class metrics alone
    ({}, {"per_class": '{"a": [5.0, 0.0]}'}),  # the champion's alone (its classes tag 0)
    ({"classes": 2}, {}),  # this version conditional, no class scored
    ({}, {"classes": "2"}),  # the champion conditional, no class scored
], ids=["our-per-class", "their-per-class", "our-classes", "their-classes"])
def test_any_one_sign_of_classes_on_either_side_runs_the_per_class_gate(new, tags):
    refused, reason = _decide(gate(), *_bare(new, **tags))
    assert refused is False and "but the per-class gate cannot be computed: no per-class metrics in " in reason, reason


def test_unconditional_on_both_sides_no_per_class_gate_runs():
    verdict = "fid10k_tf_test 20.0000 vs champion v1 30.0000: improvement 10.0000 > required 0.0000 (max of "
    promoted, reason = _decide(gate(), *_bare({}))
    assert promoted is True and reason.startswith(verdict) and "per-class" not in reason, reason
    # a champion registered before the per-class and classes tags existed: unconditional too
    promoted, reason = _decide(gate(), *_bare({}, per_class=None, classes=None))
    assert promoted is True and reason.startswith(verdict) and "per-class" not in reason, reason
    # and against a conditional version, its missing per-class tag reads as no per-class metrics
    refused, reason = _decide(gate(), *_bare({"per_class": '{"a": [5.0, 0.0]}', "classes": 1}, per_class=None, classes=None))
    assert refused is False and _gaps(reason) == "no per-class metrics in champion v1's evaluation", reason


def test_with_the_per_class_gate_off_a_version_better_overall_is_promoted_though_a_class_is_worse():
    worse = {"a": [9.0, 0.0]}
    promoted, reason = _decide(gate(per_class_gate=False), candidate(20.0, 0.0, per_class=worse),
                               champion(30.0, 0.0, per_class={"a": [5.0, 0.0]}))
    assert promoted is True, reason
    assert reason.startswith("fid10k_tf_test 20.0000 vs champion v1 30.0000: improvement 10.0000 > required")
    assert reason.endswith("; per-class gate off (register.per_class_gate: false): promoted on the overall metric alone")


# --- the per-class gate -----------------------------------------------------------------------------------


def _per_class_decision(ours: dict, theirs: dict, **cfg) -> tuple[bool, str]:
    """Clearly better overall (no noise, a gain of 10): only the per-class gate can refuse."""
    return _decide(gate(**cfg), candidate(20.0, 0.0, per_class=ours), champion(30.0, 0.0, per_class=theirs))


def test_a_class_tied_at_zero_noise_passes_and_one_worse_by_an_ulp_refuses():
    theirs = {"a": [5.0, 0.0], "b": [7.0, 0.0]}
    tied, reason = _per_class_decision({"a": [5.0, 0.0], "b": [7.0, 0.0]}, theirs)
    assert tied is True and "per-class gate: no class of 2 worse beyond noise" in reason, reason
    assert reason.startswith("fid10k_tf_test 20.0000 vs champion v1 30.0000: improvement 10.0000 > required 0.0000 "
                             "(max of min_improvement 0 and 1.96 x std of the difference); per-class gate: "), reason
    worse, reason = _per_class_decision({"a": [math.nextafter(5.0, 9.0), 0.0], "b": [7.0, 0.0]}, theirs)
    assert worse is False and "class 'a' is worse beyond noise" in reason, reason
    better, reason = _per_class_decision({"a": [1.0, 0.0], "b": [2.0, 0.0]}, theirs)  # better on every class
    assert better is True, reason


def test_the_per_class_noise_is_at_the_bonferroni_z_of_the_class_count():
    # stds 1 and 1 on both classes: the difference's std is sqrt(2); two tests at z 1.96 -> z 2.24 each
    z = bonferroni_z(1.96, 2)
    bar = z * math.sqrt(2.0)
    assert 1.96 * math.sqrt(2.0) < 3.0 < bar  # worse by 3: beyond noise at 1.96, within it at the Bonferroni z
    theirs = {"a": [5.0, 1.0], "b": [7.0, 1.0]}
    within, reason = _per_class_decision({"a": [5.0 + 3.0, 1.0], "b": [7.0, 1.0]}, theirs)
    assert within is True, reason
    below, reason = _per_class_decision({"a": [5.0 + bar * (1 - 1e-9), 1.0], "b": [7.0, 1.0]}, theirs)
    assert below is True, reason
    above, reason = _per_class_decision({"a": [5.0 + bar * (1 + 1e-9), 1.0], "b": [7.0, 1.0]}, theirs)
    assert above is False and "class 'a' is worse beyond noise" in reason and f"{z:.2f} x std" in reason, reason


def _gaps(reason: str) -> str:
    """What a per-class gate that cannot be computed says is missing, between its two fixed phrases."""
    assert "but the per-class gate cannot be computed: " in reason and ": not promoted; " in reason, reason
    return reason.split("but the per-class gate cannot be computed: ", 1)[1].split(": not promoted; ", 1)[0]


def test_a_per_class_gate_that_cannot_be_computed_refuses_and_names_each_sides_gap():
    both = {"a": [5.0, 0.0], "b": [7.0, 0.0]}
    # no per-class metrics on this side; on the champion's, class b never scored: both sides are named
    refused, reason = _per_class_decision({}, {"a": [5.0, 0.0], "b": [None, None]})
    assert refused is False
    assert _gaps(reason) == ("no per-class metrics in this version's evaluation; "
                             "class 'b' not scored in champion v1's evaluation")
    # a class absent from this side's tag, one scored without its interval: each alone, on its side
    refused, reason = _per_class_decision({"a": [5.0, 0.0]}, both)
    assert refused is False and _gaps(reason) == "class 'b' not scored in this version's evaluation", reason
    refused, reason = _per_class_decision({"a": [5.0, None], "b": [7.0, 0.0]}, both)  # scored: not "not scored"
    assert refused is False and _gaps(reason) == "no per-class interval in this version's evaluation for class 'a'"
    refused, reason = _per_class_decision(both, {"a": [5.0, 0.0], "b": [7.0, None]})
    assert refused is False and _gaps(reason) == "no per-class interval in champion v1's evaluation for class 'b'"
    # unscored on both sides (per_class_tag names it on each), and neither side with any per-class metric
    refused, reason = _per_class_decision({"a": [5.0, 0.0], "b": [None, None]}, {"a": [5.0, 0.0], "b": [None, None]})
    assert refused is False and _gaps(reason) == ("class 'b' not scored in this version's evaluation; "
                                                  "class 'b' not scored in champion v1's evaluation"), reason
    classless = champion(30.0, 0.0)
    classless.tags["classes"] = "2"  # a conditional champion whose evaluation scored no class
    refused, reason = _decide(gate(), {**candidate(20.0, 0.0), "classes": 2}, classless)
    assert refused is False and _gaps(reason) == ("no per-class metrics in this version's evaluation; "
                                                  "no per-class metrics in champion v1's evaluation"), reason


def test_a_per_class_gate_that_cannot_be_computed_says_how_to_get_one():
    refused, reason = _per_class_decision({"a": [5.0, None]}, {"a": [5.0, 0.0]})
    assert refused is False
    after = reason.split(": not promoted; ", 1)[1]
    assert after.startswith(registry.GET_INTERVALS), after
    for advice in ("with eval.num_samples large enough that every class gets more than eval.prc_neighborhood + 1 images",
                   "(the champion's side: promote a version scored so, with `ganops models promote`)",
                   "register.per_class_gate: false promotes on the overall metric alone, and the version records it"):
        assert advice in after, advice
    assert after.endswith("and the version records it"), after


def _worst(ours: dict, theirs: dict) -> tuple[str, str]:
    """The class the per-class gate names as worse beyond noise, and its reason."""
    refused, reason = _per_class_decision(ours, theirs)
    assert refused is False and reason.endswith("not promoted (register.per_class_gate)"), reason
    return reason.split("but class ", 1)[1].split(" is worse", 1)[0], reason


def test_the_per_class_gate_names_the_class_worst_beyond_its_noise():
    z = bonferroni_z(1.96, 2)  # the champion's std alone makes each class's noise (this side's is 0): z x std
    # a worse by 4 with noise 0.5 (3.5 beyond it), b worse by 3 with noise 2 (1 beyond): a, not the larger loss + noise
    name, reason = _worst({"a": [14.0, 0.0], "b": [13.0, 0.0]}, {"a": [10.0, 0.5 / z], "b": [10.0, 2.0 / z]})
    assert name == "'a'", reason
    assert "its fid10k_tf_test_class 14.0000 vs champion v1 10.0000 (worse by 4.0000 > 0.5000 = 2.24 x std" in reason
    assert "Bonferroni over 2 classes" in reason
    # a worse by 2 with noise 1 (1 beyond), b worse by 3 with noise 0.5 (2.5 beyond): b, though a comes first
    name, reason = _worst({"a": [12.0, 0.0], "b": [13.0, 0.0]}, {"a": [10.0, 1.0 / z], "b": [10.0, 0.5 / z]})
    assert name == "'b'" and "worse by 3.0000 > 0.5000" in reason, reason


def test_of_classes_equally_worse_the_gate_names_the_first():
    name, reason = _worst({"a": [6.0, 0.0], "b": [8.0, 0.0]}, {"a": [5.0, 0.0], "b": [7.0, 0.0]})
    assert name == "'a'" and "its fid10k_tf_test_class 6.0000 vs champion v1 5.0000 (worse by 1.0000 > 0.0000" in reason


# --- the per-class tag: every class of the data, scored or not ------------------------------------------------


def test_the_per_class_tag_names_every_class_with_its_distance_and_std_or_none():
    classes = ["zero", "one", "two", "three"]
    measured = EvaluationReport.model_validate({**INCEPTION, "class_names": classes}).measurement
    scores = {measured.class_name("fd", 0): 4.5, measured.class_name("fd", 0, "std"): 0.25,
              measured.class_name("fd", 1): 6.0,  # scored, without its interval
              measured.class_name("fd", 3): 2.0, measured.class_name("fd", 3, "std"): 0.5}  # two: too few images
    report = EvaluationReport.model_validate({**INCEPTION, "class_names": classes, **scores})
    tag = registry.per_class_tag(report)
    assert tag == {"zero": [4.5, 0.25], "one": [6.0, None], "two": [None, None], "three": [2.0, 0.5]}
    assert list(tag) == classes  # in the data's class order
    assert registry.per_class_tag(EvaluationReport.model_validate(INCEPTION)) == {}  # unconditional: no classes
    assert registry.per_class_tag(EvaluationReport.model_validate({**INCEPTION, "class_names": ["a", "b"]})) == {
        "a": [None, None], "b": [None, None]}  # no class scored: each still named


# --- "evaluations are comparable": one case per thing the signature compares -------------------------------


@dataclass
class Checksums:
    """The prepared data's manifest, as the signature reads it: one digest per split."""

    sums: dict[str, str]

    def checksum(self, split: str) -> str:
        return self.sums[split]


# every split with the same digest, so that a case changes the one thing it names and nothing else
DATA = {"train": "d" * 64, "validation": "d" * 64, "test": "d" * 64}
INCEPTION = {"backbone": "inception", "num_samples": 10000, "draws": 10, "reference": "test", "num_reference": 10000,
             "generator_sha256": "a" * 64, "primary_metric": "fid10k_tf_test", "fid_protocol": "tf",
             "weights_digest": "b" * 64, "evaluator_sha256": "c" * 64,
             "interval_method": "half-sampling of the draws, 5 rounds", "fid10k_tf_test": 12.0}
DOMAIN = {**INCEPTION, "backbone": "domain", "primary_metric": "fd10k_domain_test", "fid_protocol": None,
          "weights_digest": None, "fd10k_domain_test": 3.0}

# (what differs, the base report, what the other evaluation changes in the report, in the data's digests)
AXES = [
    ("metric", INCEPTION, {"primary_metric": "fid10k_tf_test_28x28"}, {}),
    ("backbone", INCEPTION, {"backbone": "domain"}, {}),
    ("sample count", INCEPTION, {"num_samples": 10001}, {}),
    ("reference split", INCEPTION, {"reference": "validation"}, {}),
    ("FID protocol", INCEPTION, {"fid_protocol": "clean"}, {}),
    ("Inception weights", INCEPTION, {"weights_digest": "b" * 63 + "0"}, {}),
    ("data (the reference split's checksum)", INCEPTION, {}, {"test": "d" * 63 + "0"}),
    ("draws", INCEPTION, {"draws": 11}, {}),
    ("interval settings", INCEPTION, {"interval_method": "half-sampling of the draws, 6 rounds"}, {}),
    ("domain evaluator (a domain metric)", DOMAIN, {"evaluator_sha256": "c" * 63 + "0"}, {}),
]


def signature(report: dict, **sums: str) -> str:
    return evaluation_signature(EvaluationReport.model_validate(report), Checksums({**DATA, **sums}))


@pytest.mark.parametrize(("axis", "base", "report", "data"), AXES, ids=[axis for axis, *_ in AXES])
def test_evaluations_that_differ_in_one_thing_measured_are_not_comparable(axis, base, report, data):
    ours, theirs = signature({**base, **report}, **data), signature(base)
    assert ours != theirs, f"{axis} differs, yet the signatures agree"
    # far better and noiseless, but measured otherwise: never promoted
    promoted, reason = _decide(gate(), candidate(0.001, 0.0, signature=ours), champion(50.0, 0.0, signature=theirs))
    assert promoted is False and reason.startswith("not comparable with champion v1"), reason


def test_evaluations_measured_alike_are_comparable():
    same = signature(INCEPTION)
    assert signature(dict(INCEPTION)) == same and len(same) == 16
    # what is not part of the measurement: the generator scored, the domain classifier (for an
    # Inception metric), the digest of a split that is not the reference
    assert signature({**INCEPTION, "generator_sha256": "f" * 64, "fid10k_tf_test": 3.0}) == same
    assert signature({**INCEPTION, "evaluator_sha256": "c" * 63 + "0"}) == same
    assert signature(INCEPTION, train="e" * 64) == same
    promoted, reason = _decide(gate(), candidate(0.001, 0.0, signature=same), champion(50.0, 0.0, signature=same))
    assert promoted is True, reason


def test_the_signature_of_a_fixed_evaluation_is_the_one_earlier_releases_registered():
    """Every registered version carries its signature as a tag, compared with the next release's: a change
    to what is hashed (a field's key, the JSON's key order) would make every registered champion
    incomparable. The values below are this format's; change them only with a migration of the tags."""
    assert signature(INCEPTION) == "5fbd5c3de89fd13e"
    assert signature(DOMAIN) == "29cc4aef6432a858"  # the domain evaluator's digest hashed too


# --- the registry locks: expiry, take-over and the fence ----------------------------------------------------


class LockRegistry:
    """What RegistryLock asks of the tracking server, kept in memory: creating a registered model is
    atomic (a second create fails with RESOURCE_ALREADY_EXISTS, as MLflow's stores answer it), its tags
    are read back as written, and it is deleted. The real server's part is tests/test_tracking.py's."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, str]] = {}
        self.descriptions: dict[str, str | None] = {}

    def create_registered_model(self, name: str, tags: dict | None = None, description: str | None = None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

        if name in self.models:
            raise MlflowException(f"Registered Model (name={name}) already exists.", error_code=RESOURCE_ALREADY_EXISTS)
        self.models[name], self.descriptions[name] = dict(tags or {}), description

    def get_registered_model(self, name: str) -> SimpleNamespace:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if name not in self.models:
            raise MlflowException(f"Registered Model with name={name} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        return SimpleNamespace(name=name, tags=dict(self.models[name]))

    def delete_registered_model(self, name: str) -> None:
        self.get_registered_model(name)
        del self.models[name]


class FailingLockRegistry(LockRegistry):
    """A LockRegistry whose server fails every call with ``error`` once ``failing`` is set (a timeout, a 5xx,
    a permission the server refuses)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error, self.failing = error, False

    def create_registered_model(self, *args, **kwargs) -> None:
        if self.failing:
            raise self.error
        super().create_registered_model(*args, **kwargs)

    def get_registered_model(self, name: str) -> SimpleNamespace:
        if self.failing:
            raise self.error
        return super().get_registered_model(name)

    def delete_registered_model(self, name: str) -> None:
        if self.failing:
            raise self.error
        super().delete_registered_model(name)


def _holder(client: LockRegistry, lock_name: str) -> str | None:
    return client.models[lock_name].get("holder") if lock_name in client.models else None


def test_a_registry_lock_at_its_expiry_is_live_and_just_after_it_is_taken_over(caplog):
    client = LockRegistry()
    first = RegistryLock(client, "expiry", hold_s=600, clock=lambda: 1000.0).__enter__()  # expires at 1600
    at_expiry = RegistryLock(client, "expiry", timeout_s=0.2, clock=lambda: 1600.0)
    with pytest.raises(TrackingError, match="stayed taken"):
        at_expiry.__enter__()
    assert _holder(client, "expiry.lock") == first.token
    first.check_held()  # still the first holder's, with its whole lease left
    with caplog.at_level(logging.WARNING, logger=registry.log.name):
        after = RegistryLock(client, "expiry", timeout_s=5, clock=lambda: math.nextafter(1600.0, math.inf)).__enter__()
    assert _holder(client, "expiry.lock") == after.token
    assert [record.getMessage() for record in caplog.records] == [
        f"the registry lock expiry.lock of {first.token} expired: taking it over"]
    # the fence: the first holder's lease ran out and another took the lock, named in the refusal
    with pytest.raises(LockLost, match=f"was taken over by {re.escape(after.token)} while this process "
                                       rf"\({re.escape(first.token)}\) held it .*: nothing moved"):
        first.check_held()
    first.__exit__(None, None, None)  # leaves the taker's lock alone
    after.check_held()
    after.__exit__(None, None, None)
    assert _holder(client, "expiry.lock") is None


def test_the_fence_wants_a_quarter_of_a_short_lease_left():
    # a lease of 100 s: the margin is min(60 s, 100 / 4) = 25 s; exactly 25 s left moves, less does not
    now = [1000.0]
    with RegistryLock(LockRegistry(), "fence", hold_s=100, clock=lambda: now[0]) as lock:
        now[0] = 1075.0
        lock.check_held()
        now[0] = math.nextafter(1075.0, math.inf)
        with pytest.raises(LockLost, match=r"has 25 s left of 100 s: too little to move the alias before another "
                                           r"process may take it over; nothing moved \(run it again\)$"):
            lock.check_held()


def test_a_live_lock_file_is_not_taken(tmp_path):
    path = tmp_path / "mlflow.db.register.lock"
    with FileRegistryLock(path) as holder:
        with pytest.raises(filelock.Timeout):
            FileRegistryLock(path, timeout_s=0.05).__enter__()
        holder.check_held()
        assert holder.holder.read_text() == holder.token


def test_a_lock_file_replaced_and_taken_over_fences_its_first_holder(tmp_path):
    path = tmp_path / "mlflow.db.register.lock"
    first = FileRegistryLock(path).__enter__()
    path.unlink()  # removed while held: another register locks a fresh file at the same path
    taker = FileRegistryLock(path, timeout_s=1).__enter__()
    with pytest.raises(LockLost, match="was replaced and taken over by .*: nothing moved"):
        first.check_held()
    first.__exit__(None, None, None)  # leaves the taker's token in place
    taker.check_held()
    taker.__exit__(None, None, None)
    assert not taker.holder.exists()


def test_the_file_fence_checks_the_lock_file_and_the_token_each_alone(tmp_path):
    path = tmp_path / "mlflow.db.register.lock"
    with FileRegistryLock(path) as lock:
        lock.holder.write_text("another-host:1:token")  # the same lock file, another holder's token
        with pytest.raises(LockLost, match="taken over by another-host:1:token"):
            lock.check_held()
        lock.holder.write_text(lock.token)
        lock.check_held()
        path.unlink()
        path.touch()  # a fresh lock file, the holder file still this process's token
        with pytest.raises(LockLost, match="was replaced"):
            lock.check_held()
        lock.holder.unlink()
        with pytest.raises(LockLost, match=r"is gone \(.*\): another process may hold the registry now; nothing moved"):
            lock.check_held()


def test_the_server_lock_is_a_model_described_as_the_lock_it_is():
    client = LockRegistry()
    with RegistryLock(client, "described", hold_s=600, clock=lambda: 1000.0) as lock:
        assert client.models["described.lock"] == {"holder": lock.token, "expires": "1600.0"}
        # what a user browsing the registry reads of the model that is not a generator
        assert client.descriptions["described.lock"] == (
            "ganops: held while a register process decides the champion; deleted after")
    assert "described.lock" not in client.models


def test_a_server_lock_the_server_refuses_to_create_stops_with_its_error():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    text = "denied: " + "x" * 300 + "TAIL"
    client = FailingLockRegistry(MlflowException(text, error_code=PERMISSION_DENIED))
    client.failing = True
    with pytest.raises(TrackingError) as refused:
        RegistryLock(client, "refused", timeout_s=5).__enter__()
    assert str(refused.value) == f"could not take the registry lock refused.lock: {text[:300]}"  # the first 300


def _waits(monkeypatch) -> list[float]:
    """The lock's waits, on a monotonic clock that moves only by them: their list."""
    now, waits = [0.0], []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(registry.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(registry.time, "sleep", sleep)
    return waits


def test_waiting_for_a_taken_server_lock_backs_off_doubling_up_to_two_seconds(monkeypatch):
    client = LockRegistry()
    RegistryLock(client, "busy").__enter__()  # another process holds it, its lease far from over
    waits = _waits(monkeypatch)
    with pytest.raises(TrackingError, match="the registry lock busy.lock stayed taken for 8 s"):
        RegistryLock(client, "busy", timeout_s=8.0).__enter__()
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]  # tried at 0, 0.05, ..., 7.15 and 9.15 s


def test_a_taken_server_lock_is_tried_once_more_at_its_deadline(monkeypatch):
    client = LockRegistry()
    RegistryLock(client, "deadline").__enter__()
    waits = _waits(monkeypatch)
    with pytest.raises(TrackingError, match="stayed taken"):
        RegistryLock(client, "deadline", timeout_s=0.05 + 0.1).__enter__()  # the second wait ends on the deadline
    assert waits == [0.05, 0.1, 0.2]  # tried at 0, 0.05, exactly at the deadline, and given up only after it


def test_a_holder_that_cannot_read_its_server_lock_is_fenced_and_leaves_it_to_expire(caplog):
    error = ConnectionError("the registry timed out: " + "x" * 300 + "TAIL")
    client = FailingLockRegistry(error)
    lock = RegistryLock(client, "unreadable").__enter__()
    client.failing = True
    with pytest.raises(LockLost) as lost:
        lock.check_held()
    assert str(lost.value) == ("could not confirm that this process still holds the registry lock unreadable.lock "
                               f"(ConnectionError: {str(error)[:300]}): nothing moved (run it again)")
    with caplog.at_level(logging.WARNING, logger=registry.log.name):
        lock.__exit__(None, None, None)  # no error of its own: the lease runs out by itself
    assert [record.getMessage() for record in caplog.records] == [
        f"could not release the registry lock unreadable.lock (it expires by itself): {error}"]
    assert _holder(client, "unreadable.lock") == lock.token


def test_a_server_lock_without_its_expiry_has_no_lease_left_to_move_the_alias():
    client = LockRegistry()
    with RegistryLock(client, "no-expiry") as lock:
        del client.models["no-expiry.lock"]["expires"]  # still this holder's, but when the lease ends is unknown
        with pytest.raises(LockLost, match="the lease on the registry lock no-expiry.lock has 0 s left of 600 s"):
            lock.check_held()


# --- rollback across an inconsistent history ---------------------------------------------------------------
# On a real embedded sqlite store, made once for the module: creating its tables takes seconds (more than a
# unit test may), so these carry the stage marker.


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SimpleNamespace:
    """One embedded sqlite store for the module; every test uses model names of its own."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models(max_results=1)  # creates the tables
    return SimpleNamespace(uri=uri, client=client, folder=folder)


@pytest.fixture
def registry_at(store, tmp_path, monkeypatch):
    """``registry_at(name, versions, history, alias)``: a registered model with that many versions, that
    history tag and the champion alias there (None: no alias), in the module's store; returns the
    MlflowParams and RegisterParams that rollback is called with."""
    import mlflow.tracking._model_registry.utils as registry_uris
    import mlflow.tracking._tracking_service.utils as tracking_uris

    # connect() points MLflow's process-wide URIs at this store: put them back afterwards
    monkeypatch.setattr(tracking_uris, "_tracking_uri", tracking_uris._tracking_uri)
    monkeypatch.setattr(registry_uris, "_registry_uri", registry_uris._registry_uri)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)

    def make(name: str, versions: int, history: list[str], alias: str | None):
        client = store.client
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, source=str(store.folder / "artifacts"))
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        if alias is not None:
            client.set_registered_model_alias(name, CHAMPION, alias)
        return MlflowParams(tracking_uri=store.uri, max_retries=0), RegisterParams(model_name=name)

    return make


def state(client, name: str) -> tuple[str | None, list[str]]:
    """The champion alias and the history tag."""
    model = client.get_registered_model(name)
    alias = model.aliases.get(CHAMPION)
    return None if alias is None else str(alias), json.loads(model.tags.get(HISTORY_TAG, "[]"))


@pytest.mark.stage
def test_rollback_moves_back_one_champion_at_a_time_down_to_the_first(store, registry_at, tmp_path):
    mlflow_cfg, cfg = registry_at("steps", 3, ["1", "2", "3"], "3")
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": "2", "rolled_back_from": "3"}
    assert state(store.client, "steps") == ("2", ["1", "2"])
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": "1", "rolled_back_from": "2"}  # exactly two: one back
    assert state(store.client, "steps") == ("1", ["1"])
    tags = {version: store.client.get_model_version("steps", version).tags for version in ("1", "2", "3")}
    when = r"on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"  # the local time of the rollback, to the second
    assert re.fullmatch(f"replaced by v2 {when}", tags["3"]["rolled_back"]), tags["3"]["rolled_back"]
    assert re.fullmatch(f"replaced by v1 {when}", tags["2"]["rolled_back"]), tags["2"]["rolled_back"]
    assert tags["2"]["restored_by_rollback_from"] == "3" and tags["1"]["restored_by_rollback_from"] == "2"
    with pytest.raises(GanopsError, match="has no earlier champion to roll back to"):
        rollback(mlflow_cfg, cfg, tmp_path)
    assert state(store.client, "steps") == ("1", ["1"])


@pytest.mark.stage
def test_rollback_after_a_promotion_whose_alias_move_failed_goes_by_the_alias(store, registry_at, tmp_path):
    # register wrote the history [1, 2, 3] and then failed to move the alias from v2 to v3
    mlflow_cfg, cfg = registry_at("failed-promotion", 3, ["1", "2", "3"], "2")
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": "1", "rolled_back_from": "2"}
    assert state(store.client, "failed-promotion") == ("1", ["1"])
    assert "rolled_back" not in store.client.get_model_version("failed-promotion", "3").tags  # it never held it


@pytest.mark.stage
@pytest.mark.parametrize(("history", "alias"), [(["1", "2"], "1"), (["1"], "1"), ([], "1"), (["1"], None)],
                         ids=["champion-to-be-after-the-first", "one-champion", "alias-without-history", "history-without-alias"])
def test_rollback_with_one_real_champion_refuses_and_moves_nothing(store, registry_at, tmp_path, history, alias):
    name = f"one-{len(history)}-{alias}"
    mlflow_cfg, cfg = registry_at(name, 2, history, alias)
    with pytest.raises(GanopsError, match=re.escape(f"{name} has no earlier champion to roll back to (history: ['1'])")):
        rollback(mlflow_cfg, cfg, tmp_path)
    assert state(store.client, name) == (alias, history)


@pytest.mark.stage
def test_rollback_of_a_model_never_promoted_refuses_with_an_empty_history(store, registry_at, tmp_path):
    mlflow_cfg, cfg = registry_at("never-promoted", 1, [], None)
    store.client.delete_registered_model_tag("never-promoted", HISTORY_TAG)  # no history tag at all, no alias
    with pytest.raises(GanopsError, match=re.escape("never-promoted has no earlier champion to roll back to (history: empty)")):
        rollback(mlflow_cfg, cfg, tmp_path)
    assert state(store.client, "never-promoted") == (None, [])


@pytest.mark.stage
def test_a_version_without_evaluation_tags_restored_by_rollback_is_never_compared(store, registry_at, tmp_path):
    """v1 carries no evaluation tags (promoted by hand, or registered before they existed); v2 does. Against
    v2 a better, comparable version is promoted; once rollback restores v1, it is refused as not comparable."""
    mlflow_cfg, cfg = registry_at("untagged", 2, ["1", "2"], "2")
    for key, value in champion(50.0, 0.0).tags.items():
        store.client.set_model_version_tag("untagged", "2", key, value)
    better = candidate(0.001, 0.0)
    assert _decide(gate(), better, _champion(store.client, "untagged"))[0] is True
    rollback(mlflow_cfg, cfg, tmp_path)
    restored = _champion(store.client, "untagged")
    assert str(restored.version) == "1" and "eval_signature" not in restored.tags
    promoted, reason = _decide(gate(), better, restored)
    assert promoted is False and reason.startswith("not comparable with champion v1"), reason


class AliasWriteFailsOnce:
    """A registry client whose first alias write fails (a transient registry error)."""

    def __init__(self, client) -> None:
        self._client, self.failed = client, False

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def set_registered_model_alias(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise OSError("the registry went away")
        return self._client.set_registered_model_alias(*args, **kwargs)


@pytest.mark.stage
def test_a_rollback_retried_after_its_alias_move_failed_goes_back_one_step(store, registry_at, tmp_path, monkeypatch):
    mlflow_cfg, cfg = registry_at("retried", 4, ["1", "2", "3", "4"], "4")
    connect = registry.connect
    monkeypatch.setattr(registry, "connect", lambda *args: AliasWriteFailsOnce(connect(*args)))
    with pytest.raises(OSError, match="went away"):
        rollback(mlflow_cfg, cfg, tmp_path)
    assert state(store.client, "retried") == ("4", ["1", "2", "3"])  # the history first, then the alias: it failed
    monkeypatch.setattr(registry, "connect", connect)
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": "3", "rolled_back_from": "4"}
    assert state(store.client, "retried") == ("3", ["1", "2", "3"])


@pytest.mark.stage
def test_rollback_to_a_deleted_version_refuses_and_moves_nothing(store, registry_at, tmp_path):
    mlflow_cfg, cfg = registry_at("deleted-previous", 2, ["1", "2"], "2")
    store.client.delete_model_version("deleted-previous", "1")
    try:
        with pytest.raises(GanopsError, match=re.escape("deleted-previous v1, the champion before v2, was deleted from the "
                                                        "registry: nothing moved; make another version champion with "
                                                        "`ganops models promote <version>`")):
            rollback(mlflow_cfg, cfg, tmp_path)
    finally:
        assert state(store.client, "deleted-previous") == ("2", ["1", "2"])


class FailsToRead:
    """A registry client that cannot read one version (a timeout, a 5xx): ``error`` each time it is asked."""

    def __init__(self, client, version: str, error: Exception) -> None:
        self._client, self.version, self.error = client, version, error

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def get_model_version(self, name: str, version: str):
        if str(version) == self.version:
            raise self.error
        return self._client.get_model_version(name, version)


@pytest.mark.stage
def test_a_rollback_that_cannot_tell_whether_the_previous_version_exists_moves_nothing(store, registry_at, tmp_path,
                                                                                       monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    mlflow_cfg, cfg = registry_at("unreadable-previous", 2, ["1", "2"], "2")
    text = "the registry is overloaded: " + "x" * 300 + "TAIL"
    connect = registry.connect
    unavailable = MlflowException(text, error_code=TEMPORARILY_UNAVAILABLE)
    monkeypatch.setattr(registry, "connect", lambda *args: FailsToRead(connect(*args), "1", unavailable))
    with pytest.raises(TrackingError) as failed:  # not "deleted": it may well be there
        rollback(mlflow_cfg, cfg, tmp_path)
    assert str(failed.value) == f"could not read v1 of unreadable-previous from the registry: {text[:300]}"
    assert state(store.client, "unreadable-previous") == ("2", ["1", "2"])


@pytest.mark.stage
def test_a_version_that_is_not_a_version_number_is_not_in_the_registry(store, registry_at, tmp_path):
    mlflow_cfg, cfg = registry_at("not-a-number", 1, ["1"], "1")
    with pytest.raises(GanopsError, match="not-a-number has no version abc"):
        promote(mlflow_cfg, cfg, "abc", tmp_path)
    assert state(store.client, "not-a-number") == ("1", ["1"])


@pytest.mark.stage
def test_rollback_on_the_projects_own_store_finds_it_in_the_project_folder(store, registry_at):
    _, cfg = registry_at("own-store", 2, ["1", "2"], "2")
    own = MlflowParams(tracking_uri=None, max_retries=0)  # the default: mlflow.db in the project folder
    assert rollback(own, cfg, store.folder) == {"champion": "1", "rolled_back_from": "2"}
    assert state(store.client, "own-store") == ("1", ["1"])


@pytest.mark.stage
def test_rollback_on_a_tracking_server_takes_the_servers_lock_over_a_crashed_holders(store, registry_at, tmp_path,
                                                                                     monkeypatch):
    """Against a tracking server (an http URI) the lock is the registered model ``<name>.lock``: one left by a
    crashed holder, its lease over, is taken over, and deleted once the rollback is done. The server here is
    the module's sqlite store, which makes that model's creation atomic as a server's database does."""
    _, cfg = registry_at("on-a-server", 2, ["1", "2"], "2")
    store.client.create_registered_model("on-a-server.lock", tags={"holder": "crashed-host:1:dead", "expires": "0"})
    monkeypatch.setattr(registry, "connect", lambda *args: store.client)
    server = MlflowParams(tracking_uri="http://127.0.0.1:9", max_retries=0)  # no server there: connect is the store's
    assert rollback(server, cfg, tmp_path) == {"champion": "1", "rolled_back_from": "2"}
    assert state(store.client, "on-a-server") == ("1", ["1"])
    assert not store.client.search_registered_models(filter_string="name LIKE '%.lock'")  # taken over, then released


@pytest.mark.stage
def test_rollback_after_the_champion_version_was_deleted_restores_the_one_before(store, registry_at, tmp_path):
    mlflow_cfg, cfg = registry_at("deleted-champion", 3, ["1", "2", "3"], "3")
    store.client.delete_model_version("deleted-champion", "3")
    assert state(store.client, "deleted-champion") == (None, ["1", "2", "3"])  # the alias went with the version
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": "2", "rolled_back_from": "3"}
    assert state(store.client, "deleted-champion") == ("2", ["1", "2"])
    assert store.client.get_model_version("deleted-champion", "2").tags["restored_by_rollback_from"] == "3"


@pytest.mark.stage
@pytest.mark.parametrize(("history", "alias", "back_to", "left"), [
    (["1", "2", "3", "4"], "2", "1", ["1"]),  # two promotions whose alias moves failed
    (["1", "2"], "3", "2", ["1", "2"]),  # the alias moved by hand to a version the history lacks
    (["1", "2", "3", "2"], "2", "3", ["1", "2", "3"]),  # v2 promoted again by hand
], ids=["two-failed-promotions", "alias-moved-by-hand", "champion-twice"])
def test_rollback_reads_the_history_as_the_alias_has_it(store, registry_at, tmp_path, history, alias, back_to, left):
    name = f"as-the-alias-{''.join(history)}-{alias}"
    mlflow_cfg, cfg = registry_at(name, 4, history, alias)
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": back_to, "rolled_back_from": alias}
    assert state(store.client, name) == (back_to, left)


@pytest.mark.stage
@pytest.mark.parametrize(("alias", "promoted", "back_to"), [("2", ["1", "2", "5"], "2"), ("4", ["1", "2", "3", "4", "5"], "4")],
                         ids=["after-a-failed-promotion", "after-a-failed-rollback"])
def test_a_promotion_extends_the_history_as_the_alias_has_it(store, registry_at, tmp_path, alias, promoted, back_to):
    """Over the tag [1, 2, 3] with the alias on 2 (the move to 3 failed) or on 4 (a rollback from 4 whose
    alias move failed), v5 promoted by hand follows the champion, and rollback brings that champion back."""
    name = f"promoted-over-{alias}"
    mlflow_cfg, cfg = registry_at(name, 5, ["1", "2", "3"], alias)
    assert promote(mlflow_cfg, cfg, "5", tmp_path) == {"champion": "5", "previous_champion": alias}
    assert state(store.client, name) == ("5", promoted)
    assert rollback(mlflow_cfg, cfg, tmp_path) == {"champion": back_to, "rolled_back_from": "5"}
