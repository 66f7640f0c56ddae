"""The evaluation's decisions at their boundaries, on small fake features and tiny generators (unit tier:
no stage, no subprocess): the shipped snapshot's re-scoring (the real snapshot scorers, the full-protocol
count, seeds apart from the in-training and evaluate ones, what train.json records), the truncation
curve's shared latents, the memorisation decision eval.json carries, and both sides of the per-class
spread."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny
from ganops.config import EvalParams
from ganops.metrics.draws import EVALUATE, RESCORE, TRUNCATE, WATCH, generated_draws, half_of_draws, sample_labels
from ganops.metrics.evaluation import Evaluation, score_draws
from ganops.metrics.frechet import FrechetReference, feature_statistics, frechet_distance_of_features
from ganops.metrics.neighbours import NeighbourSummary
from ganops.metrics.reference import ReferencedBackbone, ReferenceFeatures, ReferenceRecord
from ganops.metrics.report import EvaluationReport
from ganops.metrics.scores import METRICS, evaluation_report, fd, memorisation, per_class, precision_recall_of, truncation_curve
from ganops.metrics.snapshot import SNAPSHOT_METRICS, SnapshotScorer, snapshot_scorers
from ganops.noise import Z95
from ganops.pixels import to_uint8
from test_quality_metrics import MEASURED, PixelBackbone, reference_of
from test_watch import StepScorer

CLASSES = 3


class LatentRecorder(torch.nn.Module):
    """A generator whose image is its latents (4x4, one pixel per latent value, shifted by the label):
    it records every (z, y) it is called with, so a test sees which latents each scoring drew."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(latent_dim=16, num_classes=CLASSES)  # all that drawing reads of a spec
        self.scale = torch.nn.Parameter(torch.ones(()))  # the device is read from a parameter
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((z.clone(), None if y is None else y.clone()))
        shift = 0.0 if y is None else 0.4 * (y.float() - 1.0)[:, None]
        return torch.tanh(self.scale * z * 0.7 + shift).view(len(z), 1, 4, 4)

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every latent and label it was called with, in order."""
        return torch.cat([z for z, _ in self.calls]), torch.cat([y for _, y in self.calls])


def fake_evaluation(cfg: EvalParams, reference_images: torch.Tensor | None = None,
                    reference_labels: np.ndarray | None = None) -> Evaluation:
    """An opened evaluation, as open_evaluation returns one, on PixelBackbone (named as the FID Inception
    network, so its metrics are fid<count>_tf_train) with an in-memory reference: labelled (conditional)
    by default."""
    if reference_images is None:
        rng = np.random.default_rng(11)
        reference_labels = rng.integers(0, CLASSES, 300)
        z = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
        shift = 0.4 * (torch.from_numpy(reference_labels).float() - 1.0)[:, None]
        reference_images = to_uint8(torch.tanh(0.7 * z + shift).view(300, 1, 4, 4))
    backbone = PixelBackbone()
    features = backbone(reference_images).numpy()
    reference = ReferenceFeatures(features, *feature_statistics(features), {}, reference_labels)
    record = ReferenceRecord("inception", cfg.reference, "data", cfg.reference_max_features, fid_protocol="tf",
                             weights_digest="0" * 64)
    conditional = reference_labels is not None
    return Evaluation(cfg, record, [ReferencedBackbone(backbone, reference)], reference_images,
                      SimpleNamespace(num_classes=CLASSES if conditional else 0), reference_labels,
                      ["a", "b", "c"] if conditional else None)


def distance_of(evaluation: Evaluation, generator: torch.nn.Module, count: int, use: int) -> float:
    """The Fréchet distance of ``count`` images drawn for ``use``, computed from the draws module's seeds
    directly (not through the snapshot scorers): what a scorer for that use must give."""
    cfg, (backbone, reference) = evaluation.cfg, evaluation.backbones[0]
    labels = sample_labels(evaluation.reference_labels, count, CLASSES, cfg.seed, use)
    draws = generated_draws(generator, labels, count, cfg.draws, cfg.batch_size, cfg.seed, torch.device("cpu"), use)
    return reference.frechet.distance(backbone(torch.cat(draws)).numpy())


def shared_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many latent vectors of ``a`` also occur in ``b``."""
    return int((torch.cdist(a, b) == 0).any(dim=1).sum())


SNAPSHOT_CFG = EvalParams(num_samples=120, draws=4, spread_rounds=4, batch_size=50)


# --- the shipped snapshot's re-scoring --------------------------------------------------------------------
def test_the_re_scorer_draws_the_full_protocol_on_seeds_apart_from_training_and_evaluate():
    """The real snapshot scorers: the in-training one draws train.eval_samples images, the re-scorer
    eval.num_samples; each draws the same latents at every call (snapshots differ by weights only), and
    no latent (nor the label sequence) of one use is drawn by another: WATCH, RESCORE, EVALUATE."""
    evaluation = fake_evaluation(SNAPSHOT_CFG)
    score, rescore = snapshot_scorers(evaluation, 40)
    assert (score.plan.count, rescore.plan.count) == (40, SNAPSHOT_CFG.num_samples)
    assert (score.name, rescore.name) == ("fid40_tf_train", "fid120_tf_train")

    generator = LatentRecorder()
    drawn = {}
    for use, scoring in (("watch", lambda: score(generator)), ("rescore", lambda: rescore(generator)),
                         ("evaluate", lambda: evaluation.score(generator, SNAPSHOT_METRICS))):
        generator.calls.clear()
        scoring()
        drawn[use] = generator.latents()
        generator.calls.clear()
        scoring()
        again = generator.latents()
        assert torch.equal(again[0], drawn[use][0]) and torch.equal(again[1], drawn[use][1]), use
    assert [len(z) for z, _ in drawn.values()] == [40, 120, 120]
    for first, second in (("watch", "rescore"), ("watch", "evaluate"), ("rescore", "evaluate")):
        assert shared_rows(drawn[first][0], drawn[second][0]) == 0, (first, second)
    assert not torch.equal(drawn["rescore"][1], drawn["evaluate"][1])  # the labels are drawn per use too

    # and each scorer's number is the distance of its own use's images, computed from the seeds directly
    assert score(generator)[0] == pytest.approx(distance_of(evaluation, generator, 40, WATCH), rel=1e-12)
    assert rescore(generator)[0] == pytest.approx(distance_of(evaluation, generator, 120, RESCORE), rel=1e-12)


def test_the_train_stage_opens_the_primary_backbone_and_counts_eval_samples_then_num_samples(monkeypatch, tmp_path):
    """snapshot_scorers_of: the in-training scorer on train.eval_samples, the re-scorer on eval.num_samples,
    both on the primary backbone alone (the evaluation is opened with primary_only)."""
    from ganops.stages import train as train_stage

    params = tiny({"train": {"eval_every": 5, "eval_samples": 40}, "eval": {"num_samples": 120, "draws": 4}})
    opened = {}

    def open_evaluation(cfg, manifest, split, spec, files, device, primary_only=False):
        opened.update(cfg=cfg, primary_only=primary_only)
        return fake_evaluation(cfg)

    monkeypatch.setattr(train_stage, "open_evaluation", open_evaluation)
    monkeypatch.setattr(train_stage, "open_split", lambda folder, split: split)
    score, rescore = train_stage.snapshot_scorers_of(params, train_stage.ProjectPaths(tmp_path), None, None)
    assert opened == {"cfg": params.eval, "primary_only": True}
    assert (score.plan.count, score.plan.use, rescore.plan.count, rescore.plan.use) == (40, WATCH, 120, RESCORE)


def test_train_json_records_the_real_re_score_of_each_candidate(tmp_path):
    """fit with the real re-scorer: a scripted in-training curve (best at step 10, 15 next, the last at
    20 worse beyond noise) puts three snapshots to the re-scorer; train.json (the summary's as_json)
    names the re-scorer's metric and holds, for each candidate, the full-protocol distance of that
    snapshot on RESCORE's seeds (not on WATCH's, nor EVALUATE's): each snapshot is the EMA generator of
    a plain run of that many steps (tests/test_watch.py: watching does not change training)."""
    from ganops.models import DiscriminatorSpec, GeneratorSpec
    from ganops.training.loop import Scoring, TrainingJob, fit
    from ganops.training.report import TrainSummary

    rng = np.random.default_rng(5)
    images, labels = rng.integers(0, 256, (160, 1, 8, 8), dtype=np.uint8), rng.integers(0, CLASSES, 160)
    reference = fake_evaluation(SNAPSHOT_CFG, torch.from_numpy(images), labels)
    g_spec = GeneratorSpec(latent_dim=8, g_channels=8, max_channels=32, resolution=8, channels=1, num_classes=CLASSES,
                           class_names=["a", "b", "c"])
    d_spec = DiscriminatorSpec(d_channels=8, max_channels=32, resolution=8, channels=1, num_classes=CLASSES)

    def run(steps: int, scoring: Scoring):
        cfg = tiny({"train": {"steps": steps, "eval_every": 5, "keep_best": 2}}).train
        return fit(TrainingJob(g_spec, d_spec, cfg, "none", images, labels, tmp_path / f"{steps}"), scoring)

    _, rescore = snapshot_scorers(reference, 40)
    result = run(20, Scoring(StepScorer([30.0, 10.0, 25.0, 28.0]), rescore))
    written = TrainSummary.model_validate(result.summary.as_json())  # train.json, read back
    assert written.rescore_metric == "fid120_tf_train"
    assert [c.step for c in written.candidates] == [10, 15, 20]
    full = SNAPSHOT_CFG.num_samples
    for candidate in written.candidates:
        snapshot = run(candidate.step, Scoring()).G_ema
        assert candidate.rescored == pytest.approx(distance_of(reference, snapshot, full, RESCORE), rel=1e-12)
        assert (candidate.rescored, candidate.rescored_std) == SnapshotScorer(reference, full, RESCORE)(snapshot)
        for other_use in (WATCH, EVALUATE):  # the seeds matter: the other uses' draws score differently
            assert distance_of(reference, snapshot, full, other_use) != pytest.approx(candidate.rescored, rel=1e-9)
        assert candidate.in_training == {10: 10.0, 15: 25.0, 20: 28.0}[candidate.step]  # the scripted score, apart
    chosen = next(c for c in written.candidates if c.step == written.chosen_step)
    assert chosen.rescored == pytest.approx(distance_of(reference, result.G_ema, full, RESCORE), rel=1e-12)


# --- the truncation curve ---------------------------------------------------------------------------------
def test_the_truncation_curve_truncates_the_same_latents_at_every_psi():
    """The registry's truncation entry, run by Evaluation.score: one draw of latents (TRUNCATE's own
    seeds, not the evaluation's), and at each psi exactly those latents with only the values beyond
    +-psi redrawn; the same labels at every psi; each point the distance of the images it drew."""
    cfg = EvalParams(num_samples=60, draws=2, spread_rounds=0, batch_size=100, truncation=[0.5, 1.0],
                     truncation_samples=40)
    evaluation = fake_evaluation(cfg)
    generator = LatentRecorder()
    scores = evaluation.score(generator, [METRICS["truncation"]])
    evaluated = generator.calls[:2]  # the evaluation's own two draws come first
    (z_none, y_none), (z_half, y_half), (z_one, y_one) = generator.calls[2:]
    assert len(generator.calls) == 5 and len(z_none) == 40
    assert shared_rows(z_none, torch.cat([z for z, _ in evaluated])) == 0
    for psi, z, y in ((0.5, z_half, y_half), (1.0, z_one, y_one)):
        kept = z_none.abs() <= psi
        assert 0.3 < kept.float().mean() < 0.9  # the comparison below sees hundreds of values
        assert torch.equal(z[kept], z_none[kept]), psi
        assert bool((z.abs() <= psi).all()) and torch.equal(y, y_none)
    backbone, reference = evaluation.backbones[0]
    for label, (z, y) in zip(("psinone", "psi0.5", "psi1"), generator.calls[2:]):
        features = backbone(to_uint8(generator(z, y))).numpy()
        assert scores.metrics[f"fid40_tf_train_{label}"] == round(reference.frechet.distance(features), 6)
    assert scores.record["truncation"] == [0.5, 1.0] and scores.record["truncation_samples"] == 40


class Probed(Exception):
    """Raised by DeviceProbe once it has seen where its first latents are."""


class DeviceProbe(torch.nn.Module):
    """A generator whose weights are on another device than the CPU ("meta": no data, so on any machine):
    it records the device of the latents and labels it is called with, then stops the scoring."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(latent_dim=16, num_classes=CLASSES)
        self.scale = torch.nn.Parameter(torch.ones((), device="meta"))
        self.devices: list[tuple[str, str]] = []

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.devices.append((z.device.type, y.device.type))
        raise Probed


def test_the_truncation_curve_draws_its_latents_on_the_generator_s_device():
    """On a GPU the generator's weights are on CUDA: the curve's latents and labels must go there too
    (drawn on the CPU for the same z everywhere, then moved), not stay where they were drawn."""
    cfg = EvalParams(num_samples=60, draws=2, spread_rounds=0, batch_size=100, truncation=[0.5], truncation_samples=40)
    evaluation = fake_evaluation(cfg)
    backbone, reference = evaluation.backbones[0]
    probe = DeviceProbe()
    with pytest.raises(Probed):
        truncation_curve(probe, evaluation.reference_labels, CLASSES, SimpleNamespace(cfg=cfg, backbone=backbone,
                                                                                      reference=reference))
    assert probe.devices == [("meta", "meta")]


def test_the_truncation_curve_names_each_point_and_draws_truncates_labels_from_their_own_seeds():
    """Each psi's distance, precision and recall (torch-fidelity's, at eval.prc_neighborhood), at six
    decimals, named by the measurement (the backbone's native size included); the labels drawn with the
    reference's frequencies on TRUNCATE's seeds; and an unconditional generator gets no labels."""
    cfg = EvalParams(num_samples=60, draws=2, spread_rounds=0, batch_size=100, truncation=[0.5],
                     truncation_samples=30, prc_neighborhood=5)
    evaluation = fake_evaluation(cfg)
    backbone, reference = evaluation.backbones[0]
    backbone.native_size = 4  # named as cropped to 4 x 4 (the features are the same)
    generator = LatentRecorder()
    metrics = evaluation.score(generator, [METRICS["truncation"]]).metrics
    assert torch.equal(generator.calls[2][1], sample_labels(evaluation.reference_labels, 30, CLASSES, cfg.seed, TRUNCATE))
    expected = {}
    for label, (z, y) in zip(("psinone", "psi0.5"), generator.calls[2:]):
        features = backbone(to_uint8(generator(z, y))).numpy()
        precision, recall = precision_recall_of(features, reference.features, 5)
        expected.update({f"fid30_tf_train_4x4_{label}": round(reference.frechet.distance(features), 6),
                         f"precision30_tf_train_4x4_{label}": round(precision, 6),
                         f"recall30_tf_train_4x4_{label}": round(recall, 6)})
    assert {name: metrics[name] for name in metrics if name.startswith(("fid30", "precision30", "recall30"))} == expected
    assert all(number == round(number, 6) for number in expected.values())
    assert expected["recall30_tf_train_4x4_psinone"] != round(expected["recall30_tf_train_4x4_psinone"], 5)  # 296/300

    rng = np.random.default_rng(12)
    images = to_uint8(torch.tanh(torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))).view(300, 1, 4, 4))
    unconditional = fake_evaluation(cfg, images)
    generator = LatentRecorder()
    points = unconditional.score(generator, [METRICS["truncation"]]).metrics
    assert all(y is None for _, y in generator.calls) and "fid30_tf_train_psi0.5" in points


# --- eval.json and its siblings: the metrics DVC shows, the record, the rows it plots ----------------------
def conditional_report() -> dict:
    """A conditional evaluation as evaluate writes it: three classes (the second too rare for its own FID
    but with its class consistency), a truncation curve at psi 0.5 and 1, and the methods' prose."""
    record = {"backbone": "inception", "num_samples": 2000, "draws": 10, "reference": "train", "num_reference": 4500,
              "generator_sha256": "a" * 64, "fid_protocol": "tf", "weights_digest": "b" * 64, "evaluator_sha256": "c" * 64,
              "primary_metric": "fid2k_tf_train", "interval_method": "half-sampling, 10 rounds",
              "fd_inf_method": "a line fitted over 5 counts", "class_names": ["zero", "one", "two"],
              "truncation": [0.5, 1.0], "truncation_samples": 100, "truncation_method": "the same latents",
              "memorisation_suspected": False, "evaluator_test_accuracy_domain": 0.98}
    measured = EvaluationReport.model_validate(record).measurement
    metrics = {"fid2k_tf_train": 14.6, "fid2k_tf_train_std": 0.4, "kid2k_tf_train_mean": 0.01,
               "precision2k_tf_train": 0.7, "fid_real_halves_tf_train": 5.3, "class_consistency2k_domain_train": 0.97}
    for index in (0, 2):
        metrics |= {measured.class_name("fd", index): 20.0 + index, measured.class_name("fd", index, "std"): 1.0,
                    measured.class_name("fd", index, "ci95_low"): 18.0, measured.class_name("fd", index, "ci95_high"): 22.0,
                    measured.class_name("precision", index): 0.6, measured.class_name("recall", index): 0.5}
    for index in range(3):
        metrics[f"class_consistency2k_domain_train_class{index}"] = 0.9 + index / 100
    for label in ("psinone", "psi0.5", "psi1"):
        metrics |= {f"fid100_tf_train_{label}": 40.0, f"precision100_tf_train_{label}": 0.8,
                    f"recall100_tf_train_{label}": 0.3}
    return record | metrics


def test_eval_json_holds_the_headline_numbers_its_siblings_the_prose_and_the_rows_and_it_reads_back_whole(tmp_path):
    flat = conditional_report()
    written = EvaluationReport.model_validate(flat).write(tmp_path / "eval.json")
    assert [p.name for p in written] == ["eval.json", "eval_record.json", "eval_per_class.json", "eval_truncation.json"]
    shown = json.loads((tmp_path / "eval.json").read_text())  # what `dvc metrics show` prints
    assert {k: v for k, v in shown.items() if isinstance(v, str)} == {
        "backbone": "inception", "reference": "train", "fid_protocol": "tf", "primary_metric": "fid2k_tf_train"}
    assert not [k for k in shown if "_class" in k or "_psi" in k]
    assert shown["fid2k_tf_train"] == 14.6 and shown["class_consistency2k_domain_train"] == 0.97
    assert shown["memorisation_suspected"] is False and shown["evaluator_test_accuracy_domain"] == 0.98
    record = json.loads((tmp_path / "eval_record.json").read_text())
    assert set(record) == {"generator_sha256", "weights_digest", "evaluator_sha256", "interval_method", "fd_inf_method",
                           "class_names", "truncation", "truncation_samples", "truncation_method"}
    per_class = json.loads((tmp_path / "eval_per_class.json").read_text())
    assert [(r["class"], r["metric"], r.get("value"), r["class_consistency"]) for r in per_class] == [
        ("zero", "fid2k_tf_train_class0", 20.0, 0.9), ("one", "fid2k_tf_train_class1", None, 0.91),
        ("two", "fid2k_tf_train_class2", 22.0, 0.92)]
    truncation = json.loads((tmp_path / "eval_truncation.json").read_text())
    assert [(r["psi"], r["metric"]) for r in truncation] == [
        ("none", "fid100_tf_train_psinone"), ("0.5", "fid100_tf_train_psi0.5"), ("1", "fid100_tf_train_psi1")]
    back = EvaluationReport.load(tmp_path / "eval.json")
    assert back.model_dump(exclude_unset=True) == flat  # every number, every word, nothing added
    assert back.per_class() == EvaluationReport.model_validate(flat).per_class()
    assert [p["psi"] for p in back.truncation_curve()] == [None, 0.5, 1.0]


def test_an_eval_json_without_siblings_is_the_whole_record(tmp_path):
    flat = conditional_report()
    (tmp_path / "eval.json").write_text(json.dumps(flat))  # as ganops wrote it before the split
    assert EvaluationReport.load(tmp_path / "eval.json").model_dump(exclude_unset=True) == flat


# --- the memorisation decision ----------------------------------------------------------------------------
@pytest.mark.parametrize(("copies", "max_share", "suspected"), [
    (12, 0.1, False),                       # 12 of 120 = 0.1: at the threshold is not above it
    (13, 0.1, True),                        # one image more
    (12, float(np.nextafter(0.1, 0.0)), True),  # the threshold a hair below the share
])
def test_eval_json_suspects_memorisation_only_above_the_max_share(copies, max_share, suspected, tmp_path):
    """Generated images that are exact copies of training images (distance 0) or far from all of them (a
    constant image): the share suspiciously close is copies / 120 exactly, and eval.json, written and read
    back as register reads it, says memorisation_suspected only when the share exceeds
    eval.memorisation_max_share."""
    rng = np.random.default_rng(7)
    training = torch.from_numpy(rng.integers(0, 100, (200, 1, 4, 4), dtype=np.uint8))
    cfg = EvalParams(num_samples=120, draws=4, spread_rounds=0, memorisation_max_share=max_share)
    evaluation = fake_evaluation(cfg, training)
    generated = torch.full((120, 1, 4, 4), 255, dtype=torch.uint8)
    positions = rng.choice(120, copies, replace=False)  # copies spread over the four draws
    generated[positions] = training[rng.choice(200, copies, replace=False)]
    scores = score_draws(list(generated.split(30)), None, evaluation.backbones, cfg,
                         [METRICS["fd"], METRICS["memorisation"]], evaluation=evaluation)
    EvaluationReport.model_validate(evaluation_report(evaluation, scores, "0" * 64)).write(tmp_path / "eval.json")
    report = EvaluationReport.load(tmp_path / "eval.json")
    assert report.metric("memorised120_tf_train_share") == round(copies / 120, 6)  # eval.json rounds
    assert report.memorisation_suspected is suspected
    assert report.summary()["memorisation_suspected"] is suspected


def test_memorisation_counts_only_distances_below_the_quantile_and_shows_the_first_of_equals():
    """memorisation on given neighbour distances: the threshold is the training images' own
    nearest-neighbour distances' eval.memorisation_quantile quantile; an image exactly at it is not
    suspiciously close; the 8 closest pairs (by default) in a stable order (14 copies tied at one
    distance: the first eight by index); the four numbers named by the measurement, at six decimals."""
    own = np.array([0.5678912, 0.1234567, 0.4567891, 0.2345678, 0.3456789])  # its 0.25 quantile: 0.2345678
    distance = 0.9123457 + 0.0000013 * np.arange(40)
    distance[::3] = 0.05  # 14 copies, tied
    distance[1] = 0.2345678  # exactly at the threshold
    summary = NeighbourSummary(own, own, distance, 100 + np.arange(40)[::-1], 0.0, 0.0)
    cfg = EvalParams(memorisation_quantile=0.25, memorisation_max_share=0.5)
    metrics, nearest = memorisation(summary, cfg, MEASURED)
    assert metrics == {"memorised600_tf_train_share": 0.35,  # 14 of 40: not the one at the threshold
                       "memorised600_tf_train_threshold": 0.234568,
                       "nn_distance600_tf_train_median": 0.912357,  # (0.9123561 + 0.9123587) / 2, at 6 decimals
                       "nn_distance600_tf_train_training_median": 0.345679}
    assert list(nearest.generated) == [0, 3, 6, 9, 12, 15, 18, 21]
    assert list(nearest.training) == [139, 136, 133, 130, 127, 124, 121, 118] and list(nearest.distances) == [0.05] * 8
    assert (nearest.threshold, nearest.share) == (0.2345678, 0.35)
    assert len(memorisation(summary, cfg, MEASURED, shown=3)[1].generated) == 3


# --- the per-class spread's two sides ---------------------------------------------------------------------
@pytest.mark.parametrize("varying", ["generated", "reference"])
def test_the_per_class_std_takes_the_spread_of_each_side(varying):
    """Each class's std is the half-sample spread of both sides: data built so that only one side's
    halves vary (the other's halves are identical arrays: equal distances, variance exactly 0) must
    still give a real std, whichever side it is. ``generated``: each class of the reference is one
    point repeated; ``reference``: the generated draws are six copies of one draw."""
    rng = np.random.default_rng(8)
    centres = rng.normal(0, 2, (CLASSES, 4))
    real_labels = np.repeat(np.arange(CLASSES), 40)
    if varying == "generated":
        real = centres[real_labels]  # all of a class the same point: every reference half the same
        fake_labels = rng.integers(0, CLASSES, 180)
        fake = centres[fake_labels] + rng.normal(size=(180, 4))
        draws = list(np.split(fake, 6))
        draw_labels = list(np.split(fake_labels, 6))
    else:
        real = centres[real_labels] + rng.normal(size=(len(real_labels), 4))
        one_labels = np.repeat(np.arange(CLASSES), 10)
        one = centres[one_labels] + rng.normal(size=(30, 4))
        draws, draw_labels = [one] * 6, [one_labels] * 6  # every half of the draws the same three copies
    cfg = EvalParams(num_samples=180, draws=6, spread_rounds=8)
    metrics = per_class(reference_of(real, real_labels), draws, draw_labels, cfg, MEASURED)
    for index in range(CLASSES):
        value, std = metrics[f"fid600_tf_train_class{index}"], metrics[f"fid600_tf_train_class{index}_std"]
        assert std > 0.01 * value > 0, (varying, index, value, std)
        assert metrics[f"fid600_tf_train_class{index}_ci95_high"] > value > metrics[f"fid600_tf_train_class{index}_ci95_low"]


def labelled_features(counts: dict[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` 4-d features of each class c, around the class's own centre, shuffled."""
    labels = rng.permutation(np.repeat(list(counts), list(counts.values())))
    return labels[:, None] * 2.0 + rng.normal(size=(len(labels), 4)), labels


def test_a_class_exactly_at_prc_neighborhood_plus_two_on_each_side_is_scored_one_fewer_left_out():
    """k = 3: a class needs 5 images on each side. Class 0 has exactly 5 on both sides (scored); class 1
    one reference image short, class 2 one generated image short (left out, and ifd with them); class 3,
    after the left-out ones, is still scored."""
    rng = np.random.default_rng(21)
    real, real_labels = labelled_features({0: 5, 1: 4, 2: 30, 3: 30}, rng)
    fake, fake_labels = labelled_features({0: 5, 1: 30, 2: 4, 3: 30}, rng)
    cfg = EvalParams(num_samples=69, draws=2, spread_rounds=0, prc_neighborhood=3)
    draws, draw_labels = list(np.array_split(fake, 2)), list(np.array_split(fake_labels, 2))
    metrics = per_class(reference_of(real, real_labels), draws, draw_labels, cfg, MEASURED)
    scored = {name for name in metrics if name.startswith("fid600_tf_train_class") and name.count("_") == 3}
    assert scored == {"fid600_tf_train_class0", "fid600_tf_train_class3"}
    assert "ifid600_tf_train" not in metrics and "fid600_tf_train_class0_std" not in metrics  # no spread asked
    assert {"precision600_tf_train_class0", "recall600_tf_train_class3"} <= set(metrics)


def test_one_draw_gives_each_class_its_distance_without_a_spread():
    """The half-samples are halves of the draws: one draw has none, so no std, however many rounds."""
    rng = np.random.default_rng(22)
    real, real_labels = labelled_features({0: 20, 1: 20}, rng)
    fake, fake_labels = labelled_features({0: 20, 1: 20}, rng)
    metrics = per_class(reference_of(real, real_labels), [fake], [fake_labels],
                        EvalParams(num_samples=40, draws=2, spread_rounds=4), MEASURED)
    assert {"fid600_tf_train_class0", "fid600_tf_train_class1", "ifid600_tf_train"} <= set(metrics)
    assert not any(name.endswith(("_std", "_ci95_low", "_ci95_high")) for name in metrics)


def per_class_std_by_hand(real: np.ndarray, real_labels: np.ndarray, draws: list[np.ndarray],
                          draw_labels: list[np.ndarray], cfg: EvalParams) -> dict[int, float | None]:
    """Each class's half-sample std as per_class's docstring and SPREAD_METHOD say, on its own stream
    (seeds [eval.seed, 4]), class after class: eval.spread_rounds halves of the class's images in the
    draws (whole draws; a half of fewer than 2 images skipped), then eval.spread_rounds halves of the
    class's reference images without replacement, each against the other side whole; the two sides'
    variances added."""
    rng = np.random.default_rng([cfg.seed, 4])
    stds: dict[int, float | None] = {}
    for index in np.unique(real_labels):
        ref, own = real[real_labels == index], [draw[labels == index] for draw, labels in zip(draws, draw_labels)]
        halves = [half_of_draws(own, rng) for _ in range(cfg.spread_rounds)]
        by_generated = [FrechetReference.of_features(ref).distance(half) for half in halves if len(half) >= 2]
        subsets = [rng.choice(len(ref), size=len(ref) // 2, replace=False) for _ in range(cfg.spread_rounds)]
        assert all(len(set(subset)) == len(ref) // 2 for subset in subsets)  # halves, without replacement
        by_reference = [FrechetReference.of_features(np.concatenate(own)).distance(ref[subset]) for subset in subsets]
        spread = (np.var(by_generated, ddof=1) if len(by_generated) >= 2 else np.nan) + np.var(by_reference, ddof=1)
        stds[int(index)] = None if np.isnan(spread) else float(np.sqrt(spread))
    return stds


def test_the_smallest_spread_two_draws_and_halves_of_two_images_is_the_half_sampling_by_hand():
    """Two draws (the fewest with halves), class 0 with exactly 2 images in each (every half of it 2
    images, the fewest a distance takes): every class still gets a std, the same as by hand on
    per_class's own seeded stream, and its interval is value -+ Z95 x std."""
    rng = np.random.default_rng(23)
    real, real_labels = labelled_features({0: 9, 1: 14, 2: 14}, rng)
    draws, draw_labels = [], []
    for _ in range(2):
        fake, fake_labels = labelled_features({0: 2, 1: 10, 2: 10}, rng)
        draws.append(fake)
        draw_labels.append(fake_labels)
    cfg = EvalParams(num_samples=44, draws=2, spread_rounds=6, prc_neighborhood=2, seed=3)
    metrics = per_class(reference_of(real, real_labels), draws, draw_labels, cfg, MEASURED)
    by_hand = per_class_std_by_hand(real, real_labels, draws, draw_labels, cfg)
    for index in range(CLASSES):
        name = f"fid600_tf_train_class{index}"
        value, std = metrics[name], metrics[f"{name}_std"]
        assert std == pytest.approx(by_hand[index], rel=1e-6, abs=1e-6), index
        assert std > 0.01 * value > 0, index
        assert metrics[f"{name}_ci95_low"] == pytest.approx(value - Z95 * std, abs=3e-6), index
        assert metrics[f"{name}_ci95_high"] == pytest.approx(value + Z95 * std, abs=3e-6), index
    assert per_class(reference_of(real, real_labels), draws, draw_labels, cfg, MEASURED) == metrics  # seeded
    assert "ifid600_tf_train" in metrics and all(number == round(number, 6) for number in metrics.values())  # 6 decimals


# --- the overall distance's spread and floor --------------------------------------------------------------
def test_fd_at_two_draws_has_its_interval_and_floor_and_without_halves_none():
    """Two draws (the fewest with halves): a std, the interval value -+ Z95 x std, and the floor, the
    distance between the reference's two halves in eval.seed's permutation; one draw, or no rounds: no std."""
    rng = np.random.default_rng(31)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(40, 4)) + 0.3
    cfg = EvalParams(num_samples=40, draws=2, spread_rounds=4)
    out = fd(reference_of(real), [fake[:20], fake[20:]], cfg)
    value, std = out[("fd", "")], out[("fd", "std")]
    assert std > 0 and out[("fd", "ci95_low")] == pytest.approx(value - Z95 * std, rel=1e-12)
    assert out[("fd", "ci95_high")] == pytest.approx(value + Z95 * std, rel=1e-12)
    order = np.random.default_rng(cfg.seed).permutation(60)
    assert out[("floor", "")] == pytest.approx(frechet_distance_of_features(real[order[:30]], real[order[30:]]), rel=1e-9)
    for draws, rounds in (([fake], 4), ([fake[:20], fake[20:]], 0)):
        alone = fd(reference_of(real), draws, EvalParams(num_samples=40, draws=2, spread_rounds=rounds))
        assert set(alone) == {("fd", ""), ("floor", "")}
