"""Register refuses an evaluation whose networks are no longer the ones in place (issue 37, item 2):
the decision is ``check_same_networks`` in the register stage, fed eval.json's digests."""

from __future__ import annotations

import pytest

from conftest import need_fid_weights
from ganops import GanopsError
from ganops.io import file_sha256
from ganops.metrics.inception import CONVERTED_DIGEST
from ganops.metrics.report import EvaluationReport
from ganops.paths import ProjectPaths
from ganops.stages.register import check_same_networks


def _report(**fields) -> EvaluationReport:
    base = {"backbone": "domain", "num_samples": 10, "draws": 2, "reference": "train", "num_reference": 10,
            "generator_sha256": "0" * 64, "primary_metric": "fd10_domain_train", "interval_method": "none"}
    return EvaluationReport.model_validate({**base, **fields})


def test_a_classifier_retrained_after_the_evaluation_is_refused_naming_both_digests(tmp_path):
    paths = ProjectPaths(tmp_path)
    paths.evaluator_weights.parent.mkdir(parents=True)
    paths.evaluator_weights.write_bytes(b"the classifier that scored")
    scored = file_sha256(paths.evaluator_weights)
    check_same_networks(_report(evaluator_sha256=scored), paths, None)  # the same file: accepted
    paths.evaluator_weights.write_bytes(b"a classifier retrained afterwards (eval.evaluator.seed: 1)")
    now = file_sha256(paths.evaluator_weights)
    with pytest.raises(GanopsError, match=f"domain classifier {scored[:16]}.*is now {now[:16]}"):
        check_same_networks(_report(evaluator_sha256=scored), paths, None)
    paths.evaluator_weights.unlink()
    with pytest.raises(GanopsError, match="is now missing"):
        check_same_networks(_report(evaluator_sha256=scored), paths, None)


def test_inception_weights_other_than_those_that_scored_are_refused(tmp_path):
    """The installed FID weights (./setup.sh puts them in place; CI has them) against eval.json's digest."""
    need_fid_weights()
    paths = ProjectPaths(tmp_path)
    inception = {"backbone": "inception", "primary_metric": "fid10_tf_train", "fid_protocol": "tf"}
    check_same_networks(_report(**inception, weights_digest=CONVERTED_DIGEST), paths, None)
    other = "ab" * 32
    with pytest.raises(GanopsError, match=f"FID Inception weights {other[:16]}.*now holds {CONVERTED_DIGEST[:16]}"):
        check_same_networks(_report(**inception, weights_digest=other), paths, None)
