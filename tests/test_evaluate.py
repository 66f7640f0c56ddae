"""The evaluation stages on tiny params: domain evaluator, backbones, metrics, errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, merge
from ganops import GanopsError
from ganops.config import validate_params
from ganops.data import load_split, prepare
from ganops.metrics import evaluate, train_evaluator
from ganops.metrics.backbones import (
    INCEPTION_WEIGHTS_NAME,
    DomainBackbone,
    default_inception_weights,
    extract_features,
    load_inception,
    resolve_backbone,
)
from ganops.metrics.evaluator import load_evaluator
from ganops.metrics.frechet import frechet_distance_of_features
from ganops.training import train


def tiny(overrides: dict | None = None):
    return validate_params(merge(TINY, overrides or {}))


TRAINED = {"train": {"steps": 300, "batch_size": 32, "lr_g": 1e-3, "lr_d": 1e-3, "checkpoint_every": 300, "log_every": 50},
           "model": {"g_channels": 32, "d_channels": 32}}


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory) -> Path:
    """digits at 8x8: prepared, a generator trained for a few hundred steps, the domain evaluator."""
    root = tmp_path_factory.mktemp("evaluated")
    params = tiny(TRAINED)
    prepare(params, root)
    train(params, root)
    train_evaluator(tiny({"eval": {"evaluator": {"epochs": 4}}}), root)
    return root


def copy_project(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
    return target


def test_domain_evaluator_report(trained_project):
    report = json.loads((trained_project / "reports" / "evaluator.json").read_text())
    assert report["test_accuracy"] >= 0.8  # 8x8 digits, a tiny network, 4 epochs
    assert report["feature_dim"] == 32
    assert (trained_project / "models" / "evaluator.safetensors").is_file()


def test_evaluate_writes_backbone_named_metrics(trained_project, tmp_path):
    root = copy_project(trained_project, tmp_path / "p")
    report = evaluate(tiny(TRAINED), root)
    assert report == json.loads((root / "reports" / "eval.json").read_text())
    assert report["backbone"] == "domain"
    for name in ("fd_domain", "fd_domain_ci95_low", "fd_domain_ci95_high", "fd_domain_real_halves", "kid_domain_mean",
                 "kid_domain_std", "precision_domain", "recall_domain", "class_consistency_domain"):
        assert np.isfinite(report[name]), name
    assert not any("inception" in key for key in report)
    assert report["fd_domain_ci95_low"] <= report["fd_domain_ci95_high"]
    assert 0.0 <= report["precision_domain"] <= 1.0 and 0.0 <= report["class_consistency_domain"] <= 1.0
    assert (root / "reports" / "eval_samples.png").is_file()
    assert evaluate(tiny(TRAINED), root) == report  # seeded: the same numbers again


def test_sanity_real_halves_below_generator_below_noise(trained_project, tmp_path):
    """Two halves of the real data are close, noise is far, and a trained generator lies between."""
    root = copy_project(trained_project, tmp_path / "p")
    report = evaluate(tiny(merge(TRAINED, {"eval": {"num_samples": 400}})), root)
    real, _ = load_split(root / "data" / "prepared", "train")
    backbone = DomainBackbone(load_evaluator(root, torch.device("cpu")))
    real_features = extract_features(backbone, [torch.from_numpy(real)], len(real), "real").numpy()
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (400, *real.shape[1:]), dtype=np.uint8))
    noise_features = extract_features(backbone, [noise], len(noise), "noise").numpy()
    noise_fd = frechet_distance_of_features(real_features, noise_features)
    assert report["fd_domain_real_halves"] * 10 < noise_fd
    assert report["fd_domain_real_halves"] < report["fd_domain"] < noise_fd


def test_class_consistency_scores_images_against_their_labels(trained_project):
    from ganops.metrics.evaluate import _class_consistency

    images, labels = (torch.from_numpy(a) for a in load_split(trained_project / "data" / "prepared", "test"))
    accuracy = json.loads((trained_project / "reports" / "evaluator.json").read_text())["test_accuracy"]
    # real test images with their true labels score the classifier's test accuracy ...
    assert _class_consistency(trained_project, images, labels, 64, torch.device("cpu")) == pytest.approx(accuracy, abs=1e-5)
    # ... and with wrong labels (each shifted to the next class) next to nothing
    assert _class_consistency(trained_project, images, (labels + 1) % 10, 64, torch.device("cpu")) < 0.15


def test_errors_leave_earlier_outputs_intact(trained_project, tmp_path):
    root = copy_project(trained_project, tmp_path / "p")
    evaluate(tiny(TRAINED), root)
    before = (root / "reports" / "eval.json").read_bytes()

    with pytest.raises(GanopsError, match="must both exceed eval.prc_neighborhood"):
        evaluate(tiny(merge(TRAINED, {"eval": {"num_samples": 3}})), root)

    other = copy_project(root, tmp_path / "mismatch")
    prepare(tiny({"data": {"resolution": 16}}), other)
    with pytest.raises(GanopsError, match="makes 8x8 images with 1 channel.* holds 16x16"):
        evaluate(tiny(), other)

    (root / "models" / "generator.safetensors").rename(root / "models" / "moved")
    with pytest.raises(GanopsError, match="generator.safetensors is missing"):
        evaluate(tiny(TRAINED), root)
    (root / "models" / "generator.json").unlink()
    with pytest.raises(GanopsError, match="generator.json is missing"):
        evaluate(tiny(TRAINED), root)
    assert (root / "reports" / "eval.json").read_bytes() == before


def write_random_inception(path: Path) -> None:
    """Random weights in the layout of the FID Inception-v3 file, made with torch-fidelity's own module."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe_module

    original_url, original_load = fe_module.load_state_dict_from_url, fe_module.FeatureExtractorInceptionV3.load_state_dict
    fe_module.load_state_dict_from_url = lambda *args, **kwargs: {}
    fe_module.FeatureExtractorInceptionV3.load_state_dict = lambda self, *args, **kwargs: None
    try:
        torch.manual_seed(0)
        module = fe_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe_module.load_state_dict_from_url = original_url
        fe_module.FeatureExtractorInceptionV3.load_state_dict = original_load
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / INCEPTION_WEIGHTS_NAME
    write_random_inception(path)
    return path


def test_inception_loads_a_local_file_and_gives_2048_features(inception_weights):
    model = load_inception(inception_weights).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        (features,) = model(images)
    assert features.shape == (3, 2048)


def test_inception_stage_names_metrics_fid(trained_project, tmp_path, inception_weights):
    root = copy_project(trained_project, tmp_path / "p")
    overrides = merge(TRAINED, {"eval": {"backbone": "auto", "inception_weights": str(inception_weights),
                                         "reference": "test", "num_samples": 40, "kid_subset_size": 20,
                                         "bootstrap": 2}})
    report = evaluate(tiny(overrides), root)
    assert report["backbone"] == "inception"
    assert "fid_inception" in report and "kid_inception_mean" in report and "precision_inception" in report
    assert "fd_domain" not in report


def test_inception_weights_missing_bad_or_malicious(tmp_path):
    missing = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_NAME
    with pytest.raises(GanopsError) as error:
        load_inception(missing)
    assert str(missing) in str(error.value) and "eval.inception_weights" in str(error.value)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(GanopsError, match="not a readable weights file"):
        load_inception(evil)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(GanopsError, match="not the FID Inception-v3 layout"):
        load_inception(wrong)


def test_auto_backbone_follows_the_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_inception_weights() == tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_NAME
    assert resolve_backbone("auto", None)[0] == "domain"
    default_inception_weights().parent.mkdir(parents=True)
    default_inception_weights().write_bytes(b"x")
    assert resolve_backbone("auto", None) == ("inception", default_inception_weights())
    assert resolve_backbone("domain", None)[0] == "domain"
