"""The evaluation stages on tiny params: domain classifier, backbones, metrics, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import conftest
from conftest import merge, need_fid_weights, tiny
from ganops import GanopsError
from ganops.config import EvalParams
from ganops.data import load_split
from ganops.io import file_sha256
from ganops.metrics.backbones import DomainClassifierBackbone, extract_features, resolve_backbone
from ganops.metrics.domain_classifier import DomainClassifier, DomainClassifierSpec, classifier_accuracy, load_domain_classifier
from ganops.metrics.evaluation import score_draws
from ganops.metrics.frechet import feature_statistics, frechet_distance_of_features
from ganops.metrics.inception import default_weights_path
from ganops.metrics.reference import ReferencedBackbone, ReferenceFeatures
from ganops.metrics.report import EvaluationReport
from ganops.metrics.scores import METRICS
from ganops.paths import ProjectPaths
from ganops.stages.evaluate import evaluate
from ganops.stages.reference_stats import reference_stats
from ganops.stages.train import train
from ganops.stages.train_evaluator import train_evaluator

TRAINED = {"train": {"steps": 300, "batch_size": 32, "lr_g": 1e-3, "lr_d": 1e-3, "checkpoint_every": 300, "log_every": 50},
           "model": {"g_channels": 32, "d_channels": 32}}


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory, tiny_prepared) -> Path:
    """digits at 8x8: prepared (conftest's shared data), a generator trained for a few hundred steps, the
    domain classifier."""
    root = copy_project(tiny_prepared, tmp_path_factory.mktemp("evaluated"))
    params = tiny(TRAINED)
    train(params, root)
    train_evaluator(tiny({"eval": {"evaluator": {"epochs": 4}}}), root)
    reference_stats(params, root)  # TINY evaluates on the domain classifier: the record says so
    return root


def copy_project(source: Path, target: Path) -> Path:
    return conftest.copy_project(source, target, checkpoints=False)


class PixelBackbone:
    """Mean pixel per row as features: a cheap stand-in backbone with the names of a real one."""

    def __init__(self, name: str, feature_space: str) -> None:
        self.name, self.feature_space, self.native_size = name, feature_space, None

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return images_u8.double().mean(dim=(1, 3))


def draws_and_reference(backbone) -> tuple[list[torch.Tensor], ReferenceFeatures]:
    rng = np.random.default_rng(0)
    draws = [torch.from_numpy(rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)) for _ in range(4)]
    real = backbone(torch.from_numpy(rng.integers(0, 200, (100, 1, 8, 8), dtype=np.uint8))).numpy()
    return draws, ReferenceFeatures(real, *feature_statistics(real), {})


def test_score_draws_names_each_metric_by_its_backbone_and_the_first_is_primary():
    # fid_protocol "clean" in the config: the names still say the backbone's own feature space, "tf"
    cfg = EvalParams(num_samples=120, draws=4, spread_rounds=3, kid_subsets=5, kid_subset_size=20, fid_protocol="clean")
    inception, other = PixelBackbone("inception", "tf"), PixelBackbone("domain", "domain")
    draws, reference = draws_and_reference(inception)
    scores = score_draws(draws, None, [ReferencedBackbone(inception, reference), ReferencedBackbone(other, reference)], cfg,
                         METRICS.values())
    assert scores.primary == "fid120_tf_train"
    primary_names = {"fid120_tf_train", "fid120_tf_train_std", "fid120_tf_train_std_generated",
                     "fid120_tf_train_std_reference", "fid120_tf_train_ci95_low", "fid120_tf_train_ci95_high",
                     "fid_real_halves_tf_train", "kid120_tf_train_mean", "kid120_tf_train_std", "precision120_tf_train",
                     "recall120_tf_train", "density120_tf_train", "coverage120_tf_train", "fid_inf120_tf_train",
                     "fid_inf120_tf_train_slope", "memorised120_tf_train_share", "memorised120_tf_train_threshold",
                     "nn_distance120_tf_train_median", "nn_distance120_tf_train_training_median"}
    second_opinion = {name.replace("fid", "fd").replace("_tf_", "_domain_") for name in primary_names
                      if name.startswith("fid") and not name.startswith("fid_inf")}
    assert list(scores.metrics)[: len(primary_names)] == [n for n in scores.metrics if n in primary_names]
    assert set(scores.metrics) == primary_names | second_opinion
    # the same features under both names: the same Fréchet distance; seeded, so the same numbers again
    assert scores.metrics["fid120_tf_train"] == scores.metrics["fd120_domain_train"]
    assert score_draws(draws, None, [ReferencedBackbone(inception, reference), ReferencedBackbone(other, reference)],
                       cfg, METRICS.values()).metrics == scores.metrics
    # alone, the domain classifier is primary and gets every metric
    alone = score_draws(draws, None, [ReferencedBackbone(other, reference)], cfg, METRICS.values())
    assert alone.primary == "fd120_domain_train" and "kid120_domain_train_mean" in alone.metrics
    with pytest.raises(ValueError, match="at least one backbone"):
        score_draws(draws, None, [], cfg, METRICS.values())


def test_score_draws_adds_class_consistency_for_labelled_draws_with_the_domain_classifier():
    torch.manual_seed(0)
    spec = DomainClassifierSpec(resolution=8, channels=1, num_classes=3, width=2, class_names=["a", "b", "c"],
                                data_checksum="x")
    domain = DomainClassifierBackbone(DomainClassifier(spec).eval())
    draws, reference = draws_and_reference(domain)
    cfg = EvalParams(num_samples=120, draws=4, spread_rounds=0, kid_subsets=5, kid_subset_size=20)
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 3, 120))
    scored = score_draws(draws, labels, [ReferencedBackbone(PixelBackbone("inception", "tf"),
                                                            draws_and_reference(PixelBackbone("inception", "tf"))[1]),
                                         ReferencedBackbone(domain, reference)], cfg, METRICS.values())
    expected = classifier_accuracy(domain.model, torch.cat(draws), labels, 64)
    assert list(scored.metrics)[-4:] == ["class_consistency120_domain_train"] + [
        f"class_consistency120_domain_train_class{index}" for index in range(3)]
    assert scored.metrics["class_consistency120_domain_train"] == round(expected, 6)
    images = torch.cat(draws)
    for index in range(3):  # each class's share: the classifier's accuracy on that class's images alone
        own = labels == index
        assert scored.metrics[f"class_consistency120_domain_train_class{index}"] == round(
            classifier_accuracy(domain.model, images[own], labels[own], 64), 6)
    assert "class_consistency120_domain_train" not in score_draws(draws, None, [ReferencedBackbone(domain, reference)],
                                                                  cfg, METRICS.values()).metrics
    # no domain classifier among the backbones: no class consistency either
    pixels = PixelBackbone("domain", "domain")
    assert not any(name.startswith("class") for name in
                   score_draws(draws, labels, [ReferencedBackbone(pixels, draws_and_reference(pixels)[1])], cfg,
                               METRICS.values()).metrics)


@pytest.mark.stage
def test_domain_classifier_report(trained_project):
    report = json.loads((trained_project / "reports" / "evaluator.json").read_text())
    assert report["test_accuracy"] >= 0.8  # 8x8 digits, a tiny network, 4 epochs
    assert report["feature_dim"] == 32
    assert (trained_project / "models" / "evaluator.safetensors").is_file()


@pytest.mark.stage
def test_evaluate_writes_measurement_named_metrics(trained_project, tmp_path):
    root = copy_project(trained_project, tmp_path / "p")
    report = evaluate(tiny(TRAINED), root)
    assert report == EvaluationReport.load(root / "reports" / "eval.json").model_dump(exclude_unset=True)
    assert report["backbone"] == "domain" and report["primary_metric"] == "fd200_domain_train"
    per_class = json.loads((root / "reports" / "eval_per_class.json").read_text())  # a row per class, plotted
    assert [row["class"] for row in per_class] == report["class_names"]
    assert all(not isinstance(value, str) for key, value in json.loads((root / "reports" / "eval.json").read_text()).items()
               if key not in ("backbone", "reference", "fid_protocol", "primary_metric"))
    for name in ("fd200_domain_train", "fd200_domain_train_ci95_low", "fd200_domain_train_ci95_high",
                 "fd200_domain_train_std", "fd_real_halves_domain_train", "kid200_domain_train_mean",
                 "kid200_domain_train_std", "precision200_domain_train", "recall200_domain_train",
                 "class_consistency200_domain_train"):
        assert np.isfinite(report[name]), name
    assert not any(key.startswith("fid") for key in report)
    # every network that scored is named by its digest: here the domain classifier's weights file
    assert report["evaluator_sha256"] == file_sha256(ProjectPaths(root).evaluator_weights)
    # the interval is the estimate +- 1.96 half-sampling std (so it contains it), the std is a real spread,
    # and the method says so; whether that std matches the estimate's true spread is test_frechet's
    value, std = report["fd200_domain_train"], report["fd200_domain_train_std"]
    from ganops.metrics.scores import Z95

    assert std > 0 and report["fd200_domain_train_ci95_low"] == pytest.approx(value - Z95 * std)
    assert report["fd200_domain_train_ci95_high"] == pytest.approx(value + Z95 * std)
    assert "half-sampling" in report["interval_method"]
    assert 0.0 <= report["precision200_domain_train"] <= 1.0 and 0.0 <= report["class_consistency200_domain_train"] <= 1.0
    assert (root / "reports" / "eval_samples.png").is_file()
    assert evaluate(tiny(TRAINED), root) == report  # seeded: the same numbers again


@pytest.mark.stage
def test_sanity_real_halves_below_generator_below_noise(trained_project, tmp_path):
    """Two halves of the real data are close, noise is far, and a trained generator lies between."""
    root = copy_project(trained_project, tmp_path / "p")
    report = evaluate(tiny(merge(TRAINED, {"eval": {"num_samples": 400}})), root)
    real, _ = load_split(root / "data" / "prepared", "train")
    backbone = DomainClassifierBackbone(load_domain_classifier(ProjectPaths(root).evaluator_weights,
                                                                ProjectPaths(root).evaluator_spec, torch.device("cpu")))
    real_features = extract_features(backbone, [torch.from_numpy(real)], len(real), "real")
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (400, *real.shape[1:]), dtype=np.uint8))
    noise_features = extract_features(backbone, [noise], len(noise), "noise")
    noise_fd = frechet_distance_of_features(real_features, noise_features)
    assert report["fd_real_halves_domain_train"] * 10 < noise_fd
    assert report["fd_real_halves_domain_train"] < report["fd400_domain_train"] < noise_fd

    # the same architecture, untrained: it must score clearly worse than the trained generator
    from safetensors.torch import save_file

    from ganops.models import GeneratorSpec, build_generator

    untrained_root = copy_project(trained_project, tmp_path / "untrained")
    torch.manual_seed(0)
    untrained = build_generator(GeneratorSpec.load(untrained_root / "models" / "generator.json"))
    save_file({k: v.contiguous() for k, v in untrained.state_dict().items()},
              str(untrained_root / "models" / "generator.safetensors"))
    untrained_report = evaluate(tiny(merge(TRAINED, {"eval": {"num_samples": 400}})), untrained_root)
    assert untrained_report["fd400_domain_train"] > report["fd400_domain_train_ci95_high"]


@pytest.mark.stage
def test_class_consistency_scores_images_against_their_labels(trained_project):
    model = load_domain_classifier(ProjectPaths(trained_project).evaluator_weights,
                                   ProjectPaths(trained_project).evaluator_spec, torch.device("cpu"))
    images, labels = (torch.from_numpy(a) for a in load_split(trained_project / "data" / "prepared", "test"))
    accuracy = json.loads((trained_project / "reports" / "evaluator.json").read_text())["test_accuracy"]
    # real test images with their true labels score the classifier's test accuracy ...
    assert classifier_accuracy(model, images, labels, 64) == pytest.approx(accuracy, abs=1e-5)
    # ... and with wrong labels (each shifted to the next class) next to nothing
    assert classifier_accuracy(model, images, (labels + 1) % 10, 64) < 0.15


@pytest.mark.stage
def test_errors_leave_earlier_outputs_intact(trained_project, tmp_path, tiny_prepared16):
    root = copy_project(trained_project, tmp_path / "p")
    evaluate(tiny(TRAINED), root)
    before = (root / "reports" / "eval.json").read_bytes()

    with pytest.raises(GanopsError, match="must all exceed eval.prc_neighborhood"):
        evaluate(tiny(merge(TRAINED, {"eval": {"num_samples": 4, "draws": 2, "prc_neighborhood": 5}})), root)
    with pytest.raises(GanopsError, match=r"eval.num_samples \(30\) must be at least 2 x eval.draws \(20\)"):
        tiny(merge(TRAINED, {"eval": {"num_samples": 30, "draws": 20}}))

    other = copy_project(root, tmp_path / "mismatch")
    shutil.rmtree(other / "data" / "prepared")
    copy_project(tiny_prepared16, other)  # the data prepared at 16x16: prepare(tiny(resolution 16), other)
    with pytest.raises(GanopsError, match="makes 8x8 images with 1 channel.* holds 16x16"):
        evaluate(tiny(), other)

    (root / "models" / "generator.safetensors").rename(root / "models" / "moved")
    with pytest.raises(GanopsError, match="generator.safetensors is missing"):
        evaluate(tiny(TRAINED), root)
    (root / "models" / "generator.json").unlink()
    with pytest.raises(GanopsError, match="generator.json is missing"):
        evaluate(tiny(TRAINED), root)
    assert (root / "reports" / "eval.json").read_bytes() == before


@pytest.mark.stage
def test_inception_stage_reports_standard_fid_with_reference_stats(trained_project, tmp_path):
    """The real FID Inception network (installed by ./setup.sh): reference statistics once, FID named by its measurement."""
    need_fid_weights()
    root = copy_project(trained_project, tmp_path / "p")
    # the real network's passes are what cost here: 40 samples, 10 per point of the truncation curve
    overrides = merge(TRAINED, {"eval": {"backbone": "inception", "reference": "test", "num_samples": 40, "draws": 4,
                                         "kid_subset_size": 20, "spread_rounds": 2, "truncation_samples": 10}})
    params = tiny(overrides)
    record = reference_stats(params, root)
    assert record["backbone"] == "inception" and record["num_reference"] == 179 and record["fid_protocol"] == "tf"
    features = np.load(root / "data" / "reference" / "features.npy")
    assert features.shape == (179, 2048) and features.dtype == np.float32
    report = evaluate(params, root)
    assert report["primary_metric"] == "fid40_tf_test"
    for name in ("fid40_tf_test", "fid40_tf_test_ci95_low", "fid_real_halves_tf_test", "kid40_tf_test_mean",
                 "precision40_tf_test", "recall40_tf_test", "fd40_domain_test", "class_consistency40_domain_test"):
        assert np.isfinite(report[name]), name
    assert report["fid40_tf_test_ci95_low"] <= report["fid40_tf_test"] <= report["fid40_tf_test_ci95_high"]
    assert report["fid_protocol"] == "tf" and len(report["weights_digest"]) == 64

    # another protocol: the cached statistics no longer match, and evaluate says what to run
    with pytest.raises(GanopsError, match="fid_protocol: cached 'tf', now 'clean'.*dvc repro reference_stats"):
        evaluate(tiny(merge(overrides, {"eval": {"fid_protocol": "clean"}})), root)


@pytest.mark.stage
def test_auto_backbone_falls_back_to_domain_and_says_so(trained_project, tmp_path, monkeypatch):
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "empty-cache"))
    backbone, weights, reason = resolve_backbone("auto", None)
    assert backbone == "domain" and weights == default_weights_path() and "no FID Inception weights" in reason
    root = copy_project(trained_project, tmp_path / "p")
    params = tiny(merge(TRAINED, {"eval": {"backbone": "auto"}}))
    reference_stats(params, root)
    report = evaluate(params, root)
    assert report["backbone"] == "domain" and "no FID Inception weights" in report["backbone_fallback"]
    assert report["primary_metric"] == "fd200_domain_train"
    with pytest.raises(GanopsError, match="eval.backbone is 'inception' but the FID Inception weights are not at"):
        reference_stats(tiny(merge(TRAINED, {"eval": {"backbone": "inception"}})), root)
