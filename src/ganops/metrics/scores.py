"""The evaluate stage's metrics, as entries of one registry (the stylegan2-ada way): ``METRICS``,
which ``ganops.metrics.evaluation.Evaluation.score`` runs, each entry declaring what it needs.

The metrics on features take the reference features, the generated features as a list of seeded
draws (float64, (n_i, D) each) and the eval params, and return numbers keyed by (metric, suffix),
which their entry names by the measurement (:mod:`ganops.metrics.names`). KID and precision/recall
are torch-fidelity's own implementations, fed our features. The Fréchet distance is ours
(:mod:`ganops.metrics.frechet`). Evaluate-only: the train stage's in-training score is
:mod:`ganops.metrics.snapshot`'s, and this module is not among its dependencies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ganops import GanopsError
from ganops.config import EvalParams
from ganops.figures import memorisation_png, notice_png
from ganops.io import first_non_finite
from ganops.metrics.domain_classifier import classifier_hits
from ganops.metrics.draws import TRUNCATE, features_of_draws, generated_draws, half_of_draws, sample_labels
from ganops.metrics.evaluation import Evaluation, Found, Metric, NearestTraining, Scored, Scores
from ganops.metrics.frechet import FrechetReference, feature_statistics, frechet_distance
from ganops.metrics.names import Measurement, truncation_label
from ganops.metrics.neighbours import NeighbourSummary, neighbour_summary
from ganops.metrics.reference import ReferenceFeatures, kept_mask
from ganops.metrics.report import EvaluationReport
from ganops.noise import Z95, half_sample_std
from ganops.visualize import sample_grid_png

MetricFn = Callable[[ReferenceFeatures, list[np.ndarray], EvalParams], dict[tuple[str, str], float]]

SPREAD_METHOD = (
    "half-sampling: the Fréchet distance recomputed on {rounds} random halves of the generated images, each half "
    "made of whole seeded draws ({draws} draws of about {per_draw} images, so every half is itself a fresh draw of "
    "N/2 images), and on {rounds} random halves of the reference split (without replacement); for a half-sample "
    "Var(FD at N) ~ Var(FD at N/2) x (N/2)/(N - N/2), so the two spreads' variances add as they are. "
    "Interval: estimate +- {z:.2f} x std (normal approximation), so it contains the estimate."
)


def fd(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Fréchet distance; its standard deviation and 95% interval by half-sampling (see SPREAD_METHOD);
    and the distance between two halves of the reference split: the floor at this sample size. The
    distances against the whole reference reuse its factor (ReferenceFeatures.frechet); those of the
    reference's halves against all generated images use the generated features as their factor."""
    real, fake = reference.features, np.concatenate(draws)
    value = reference.frechet.distance(fake)  # against the reference factored once (FrechetReference)
    out = {("fd", ""): value}
    rng = np.random.default_rng(cfg.seed)
    half = len(real) // 2
    order = rng.permutation(len(real))
    out[("floor", "")] = frechet_distance(*feature_statistics(real[order[:half]]),
                                          *feature_statistics(real[order[half:]]))
    if cfg.spread_rounds > 0 and len(draws) >= 2:
        generated = FrechetReference.of_features(fake)  # the fixed side of the reference half-samples
        by_generated, by_reference = [], []
        for _ in range(cfg.spread_rounds):
            by_generated.append(reference.frechet.distance(half_of_draws(draws, rng)))
            subset = rng.choice(len(real), size=half, replace=False)
            by_reference.append(generated.distance(real[subset]))
        std = half_sample_std(by_generated, by_reference)
        out.update({("fd", "std"): std, ("fd", "std_generated"): half_sample_std(by_generated),
                    ("fd", "std_reference"): half_sample_std(by_reference),
                    ("fd", "ci95_low"): value - Z95 * std, ("fd", "ci95_high"): value + Z95 * std})
    return out


def kid(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD², cubic kernel, over subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, fake = reference.features, np.concatenate(draws)
    subset = min(cfg.kid_subset_size, len(real), len(fake))
    result = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=cfg.kid_subsets,
                                    kid_subset_size=subset, rng_seed=cfg.seed, verbose=False)
    return {("kid", "mean"): float(result["kernel_inception_distance_mean"]),
            ("kid", "std"): float(result["kernel_inception_distance_std"])}


def precision_recall_of(fake: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), torch-fidelity's, of (n, D) features."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    result = prc_features_to_metric(torch.from_numpy(fake).float(), torch.from_numpy(real).float(),
                                    prc_neighborhood=k, verbose=False)
    return float(result["precision"]), float(result["recall"])


def precision_recall(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifolds of each set."""
    precision, recall = precision_recall_of(np.concatenate(draws), reference.features, cfg.prc_neighborhood)
    return {("precision", ""): precision, ("recall", ""): recall}


def density_coverage(summary: NeighbourSummary) -> dict[tuple[str, str], float]:
    """Density and coverage (Naeem et al. 2020) with k = eval.dc_neighborhood (the paper's 5), from
    the neighbour distances (ganops.metrics.neighbours: equal to the prdc package's)."""
    return {("density", ""): summary.density, ("coverage", ""): summary.coverage}


FD_INF_METHOD = (
    "FD-infinity (Chong & Forsyth 2020): the Fréchet distance of seeded random subsets of the generated "
    "images, of {counts} images (the last: all of them), against the whole reference; a least-squares line in 1/N, "
    "its value at 1/N = 0. "
    "No interval."
)


def fd_inf_counts(num_samples: int, points: int) -> list[int]:
    """The subset sizes FD-infinity is fitted on: evenly spaced from a fifth of the images to all of them."""
    return sorted({int(n) for n in np.linspace(max(2, num_samples // 5), num_samples, points).round()})


def fd_inf(reference: ReferenceFeatures, draws: list[np.ndarray], cfg: EvalParams) -> dict[tuple[str, str], float]:
    """The Fréchet distance extrapolated to infinitely many generated images (see FD_INF_METHOD): the
    distance at N is biased upwards by about c / N, and FD-infinity removes that bias."""
    fake = np.concatenate(draws)
    rng = np.random.default_rng([cfg.seed, 3])
    counts = fd_inf_counts(len(fake), cfg.fid_inf_points)
    values = [reference.frechet.distance(fake[rng.choice(len(fake), n, replace=False)]) for n in counts]
    slope, intercept = np.polyfit(1.0 / np.asarray(counts, np.float64), values, 1)
    return {("fd_inf", ""): float(intercept), ("fd_inf", "slope"): float(slope)}


def spread_method(cfg: EvalParams, num_draws: int) -> str:
    return SPREAD_METHOD.format(rounds=cfg.spread_rounds, draws=num_draws, per_draw=cfg.num_samples // num_draws, z=Z95)


def per_class(reference: ReferenceFeatures, draws: list[np.ndarray], draw_labels: list[np.ndarray], cfg: EvalParams,
              measurement: Measurement) -> dict[str, float]:
    """Intra-class metrics (PyTorch-StudioGAN's iFID): for each class, the Fréchet distance of the
    generated images of that class against the reference images of that class, with its std and 95%
    interval by the same half-sampling as the overall one (SPREAD_METHOD, within the class), and
    precision/recall (torch-fidelity's) within the class; ``ifd`` is the mean of the per-class
    distances. The generated images come with the reference's class frequencies, so a class holds
    about its share of eval.num_samples. Classes with fewer than eval.prc_neighborhood + 2 images on
    either side are left out (and so is ``ifd``)."""
    results: dict[str, float] = {}
    smallest = cfg.prc_neighborhood + 2
    classes = np.unique(reference.labels)
    rng = np.random.default_rng([cfg.seed, 4])
    for index in classes:
        real = reference.features[reference.labels == index]
        own = [draw[labels == index] for draw, labels in zip(draws, draw_labels)]
        fake = np.concatenate(own)
        if len(real) < smallest or len(fake) < smallest:
            continue
        target = FrechetReference.of_features(real)
        value = target.distance(fake)
        out = {("fd", ""): value}
        if cfg.spread_rounds > 0 and len(draws) >= 2:
            by_generated = [target.distance(half)
                            for half in (half_of_draws(own, rng) for _ in range(cfg.spread_rounds)) if len(half) >= 2]
            generated = FrechetReference.of_features(fake)
            by_reference = [generated.distance(real[rng.choice(len(real), size=len(real) // 2, replace=False)])
                            for _ in range(cfg.spread_rounds)]
            std = half_sample_std(by_generated, by_reference)
            if std is not None:  # a rare class can leave halves without 2 images
                out.update({("fd", "std"): std, ("fd", "ci95_low"): value - Z95 * std,
                            ("fd", "ci95_high"): value + Z95 * std})
        precision, recall = precision_recall_of(fake, real, cfg.prc_neighborhood)
        out.update({("precision", ""): precision, ("recall", ""): recall})
        for (metric, suffix), number in out.items():
            results[measurement.class_name(metric, int(index), suffix)] = round(float(number), 6)
    distances = [results[measurement.class_name("fd", int(index))] for index in classes
                 if measurement.class_name("fd", int(index)) in results]
    if len(distances) == len(classes):
        results[measurement.name("ifd")] = round(float(np.mean(distances)), 6)
    return results


MEMORISATION_METHOD = (
    "each generated image's Euclidean distance, in the {space} feature space, to its nearest training image, "
    "against the training images' own nearest-neighbour distances (each to its nearest other training image, "
    "over the {count} training features kept); suspiciously close: nearer than the {quantile:g} quantile of "
    "those. Images drawn fresh from the data distribution land there about {quantile:.0%} of the time, copies "
    "of training images always; suspected when the share exceeds {limit:g}."
)


def memorisation(summary: NeighbourSummary, cfg: EvalParams, measurement: Measurement,
                 shown: int = 8) -> tuple[dict[str, float], NearestTraining]:
    """The share of generated images suspiciously close to a training image (MEMORISATION_METHOD),
    the threshold, and the ``shown`` closest pairs, from the neighbour distances of generated features
    to the training split's (``summary``: the reference must be the training split)."""
    own, distance, nearest = summary.own_nearest, summary.fake_nearest, summary.fake_nearest_index
    threshold = float(np.quantile(own, cfg.memorisation_quantile))
    share = float(np.mean(distance < threshold))
    closest = np.argsort(distance, kind="stable")[:shown]
    metrics = {measurement.name("memorised", "share"): round(share, 6),
               measurement.name("memorised", "threshold"): round(threshold, 6),
               measurement.name("nn_distance", "median"): round(float(np.median(distance)), 6),
               measurement.name("nn_distance", "training_median"): round(float(np.median(own)), 6)}
    return metrics, NearestTraining(closest, nearest[closest], distance[closest], threshold, share)


MIN_REFERENCE = 10


def check_sizes(cfg: EvalParams, num_reference: int) -> None:
    """Enough reference images, and more images on each side than the metrics' neighbourhoods."""
    if num_reference < MIN_REFERENCE:
        raise GanopsError(f"the {cfg.reference} split holds {num_reference} images; evaluation needs at least "
                          f"{MIN_REFERENCE} (set eval.reference or data.test_fraction)")
    neighbours = max(cfg.prc_neighborhood, cfg.dc_neighborhood)
    smallest = min(cfg.num_samples, cfg.truncation_samples) if cfg.truncation else cfg.num_samples
    if smallest <= neighbours or min(num_reference, cfg.reference_max_features) <= neighbours:
        raise GanopsError(f"eval.num_samples={cfg.num_samples}, eval.truncation_samples={cfg.truncation_samples} and "
                          f"the reference features kept (the fewer of its {num_reference} images and "
                          f"eval.reference_max_features) must all exceed eval.prc_neighborhood="
                          f"{cfg.prc_neighborhood} and eval.dc_neighborhood={cfg.dc_neighborhood}")


def evaluation_report(evaluation: Evaluation, scores: Scores, generator_sha256: str, extra: dict | None = None) -> dict:
    """eval.json's fields in their order: what was measured, how, the metrics, then ``extra``;
    checked finite and against ``EvaluationReport`` (the record later stages read back), so that
    nothing is written when it is not."""
    report = {**_measured(evaluation, scores, generator_sha256), **(extra or {})}
    where = first_non_finite(report)
    if where is not None:
        raise GanopsError(f"the evaluation's {where} is not a finite number; nothing written")
    EvaluationReport.model_validate(report)
    return report


def _measured(evaluation: Evaluation, scores: Scores, generator_sha256: str) -> dict:
    cfg, record = evaluation.cfg, evaluation.record
    report: dict = {"backbone": record.backbone, "num_samples": cfg.num_samples, "draws": cfg.draws,
                    "reference": cfg.reference, "num_reference": len(evaluation.split),
                    "generator_sha256": generator_sha256}
    if record.backbone == "inception":
        report.update({"fid_protocol": cfg.fid_protocol, "weights_digest": record.weights_digest})
        if record.native_size is not None:  # both sides cropped to the data's native size
            report["native_size"] = record.native_size
    else:
        report["backbone_fallback"] = record.fallback_reason
    if evaluation.evaluator_sha256 is not None:  # every network that scored is named by its digest
        report["evaluator_sha256"] = evaluation.evaluator_sha256
    return {**report, "primary_metric": scores.primary, **scores.record, **scores.metrics}


def samples_picture(evaluation: Evaluation, scores: Scores) -> bytes:
    """The scored images as a grid, a row per class when conditional."""
    labels = scores.labels.numpy() if scores.labels is not None else None
    return sample_grid_png(torch.cat(scores.draws).numpy(), labels, evaluation.spec.num_classes)


def memorisation_picture(evaluation: Evaluation, scores: Scores) -> bytes:
    """The generated images nearest to a training image beside it, or a notice why there are none."""
    if scores.nearest is None:
        return notice_png(f"memorisation not measured: eval.reference is {evaluation.cfg.reference}, "
                          "not the training split")
    kept = np.flatnonzero(kept_mask(len(evaluation.split), evaluation.cfg.reference_max_features))
    generated = torch.cat(scores.draws)[scores.nearest.generated].numpy()
    return memorisation_png(generated, evaluation.split.gather(kept[scores.nearest.training]),
                            scores.nearest.distances, scores.nearest.threshold)


TRUNCATION_METHOD = (
    "the Fréchet distance, precision and recall of {count} generated images at each truncation psi ({values}), "
    "against the whole reference: one seeded draw, the same latents before truncation at every psi (their own "
    "seeds, not the evaluation's), so the points differ by psi only; names end in _psi<value> (_psinone: no "
    "truncation). At {count} images the distance is biased upwards: compare the points with each other, not "
    "with the {total}-image metrics."
)


def truncation_curve(generator: torch.nn.Module, reference_labels: np.ndarray | None, num_classes: int,
                     scored: Scored) -> dict[str, float]:
    """The Fréchet distance, precision and recall against truncation psi (TRUNCATION_METHOD) on the
    primary backbone, named e.g. fid500_tf_train_psi0.7."""
    cfg, backbone, reference = scored.cfg, scored.backbone, scored.reference
    count = cfg.truncation_samples
    measurement = Measurement(backbone.name, backbone.feature_space, count, cfg.reference, backbone.native_size)
    labels = sample_labels(reference_labels, count, num_classes, cfg.seed, TRUNCATE) if reference_labels is not None else None
    device = next(generator.parameters()).device
    out: dict[str, float] = {}
    for psi in [None, *cfg.truncation]:
        draws = generated_draws(generator, labels, count, 1, cfg.batch_size, cfg.seed, device, TRUNCATE, psi)
        (fake,) = features_of_draws(backbone, draws, cfg.batch_size)
        precision, recall = precision_recall_of(fake, reference.features, cfg.prc_neighborhood)
        label = truncation_label(psi)
        out[measurement.name("fd", label)] = round(reference.frechet.distance(fake), 6)
        out[measurement.name("precision", label)] = round(precision, 6)
        out[measurement.name("recall", label)] = round(recall, 6)
    return out


def truncation_method(cfg: EvalParams) -> str:
    values = ", ".join(["none", *(f"{psi:g}" for psi in cfg.truncation)])
    return TRUNCATION_METHOD.format(count=cfg.truncation_samples, values=values, total=cfg.num_samples)


def class_consistency(scored: Scored) -> dict[str, float]:
    """The share of images the domain classifier assigns to the label they were generated for, overall
    and per class."""
    labels = torch.from_numpy(np.concatenate(scored.labels))
    hits = classifier_hits(scored.backbone.model, torch.cat(scored.draws), labels, scored.cfg.batch_size)
    metrics = {scored.measurement.name("class_consistency"): round(float(hits.mean()), 6)}
    for label in np.unique(labels.numpy()):
        metrics[scored.measurement.class_name("class_consistency", int(label))] = round(
            float(hits[labels.numpy() == label].mean()), 6)
    return metrics


# --- the registry: each entry one metric of eval.json, in eval.json's order -------------------------
def _named(measurement: Measurement, found: dict[tuple[str, str], float]) -> dict[str, float]:
    """Numbers keyed by (metric, suffix), named by ``measurement`` and rounded for the report."""
    return {measurement.floor_name() if metric == "floor" else measurement.name(metric, suffix): round(float(value), 6)
            for (metric, suffix), value in found.items()}


def _on_features(metric: MetricFn) -> Callable[[Scored], Found]:
    return lambda scored: Found(_named(scored.measurement, metric(scored.reference, scored.features, scored.cfg)))


def _neighbours(scored: Scored) -> NeighbourSummary:
    """The neighbour distances density, coverage and memorisation share, computed once per scoring."""
    if "neighbours" not in scored.shared:
        scored.shared["neighbours"] = neighbour_summary(scored.reference.features, np.concatenate(scored.features),
                                                        scored.cfg.dc_neighborhood)
    return scored.shared["neighbours"]


def _fd_entry(scored: Scored) -> Found:
    cfg = scored.cfg
    method = spread_method(cfg, cfg.draws) if cfg.spread_rounds else "none (eval.spread_rounds: 0)"
    return Found(_named(scored.measurement, fd(scored.reference, scored.features, cfg)),
                 {"interval_method": method} if scored.primary else {})


def _fd_inf_entry(scored: Scored) -> Found:
    counts = ", ".join(map(str, fd_inf_counts(scored.cfg.num_samples, scored.cfg.fid_inf_points)))
    return Found(_named(scored.measurement, fd_inf(scored.reference, scored.features, scored.cfg)),
                 {"fd_inf_method": FD_INF_METHOD.format(counts=counts)})


def _per_class_entry(scored: Scored) -> Found:
    found = per_class(scored.reference, scored.features, scored.labels, scored.cfg, scored.measurement)
    names = scored.evaluation.class_names if scored.evaluation is not None else None
    return Found(found, {"class_names": names} if names is not None else {})


def _density_coverage_entry(scored: Scored) -> Found:
    return Found(_named(scored.measurement, density_coverage(_neighbours(scored))))


def _memorisation_entry(scored: Scored) -> Found:
    cfg = scored.cfg
    found, nearest = memorisation(_neighbours(scored), cfg, scored.measurement)
    method = MEMORISATION_METHOD.format(space=scored.backbone.feature_space, count=len(scored.reference.features),
                                        quantile=cfg.memorisation_quantile, limit=cfg.memorisation_max_share)
    return Found(found, {"memorisation_method": method, "memorisation_suspected": nearest.share > cfg.memorisation_max_share},
                 nearest)


def _truncation_entry(scored: Scored) -> Found:
    cfg, evaluation = scored.cfg, scored.evaluation
    if not cfg.truncation:
        return Found({})
    curve = truncation_curve(scored.generator, evaluation.reference_labels, evaluation.spec.num_classes, scored)
    return Found(curve, {"truncation_method": truncation_method(cfg), "truncation": cfg.truncation,
                         "truncation_samples": cfg.truncation_samples})


METRICS: dict[str, Metric] = {
    "fd": Metric(_fd_entry, every_backbone=True),  # every other backbone is a second opinion on the distance
    "kid": Metric(_on_features(kid)),
    "prc": Metric(_on_features(precision_recall)),
    "fd_inf": Metric(_fd_inf_entry),
    "per_class": Metric(_per_class_entry, frozenset({"labels", "reference_labels"})),
    "density_coverage": Metric(_density_coverage_entry),
    "memorisation": Metric(_memorisation_entry, frozenset({"training_reference"})),
    "class_consistency": Metric(lambda scored: Found(class_consistency(scored)),
                                frozenset({"labels", "domain_classifier"}), every_backbone=True),
    "truncation": Metric(_truncation_entry, frozenset({"own_draws"})),
}
