"""reports/eval.json read back: the record that export, register, the registry and the Prefect summary
read an evaluation through."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ganops.metrics.names import Measurement, truncation_label


class EvaluationReport(BaseModel):
    """reports/eval.json, read back: the measurement's fields by name, every metric as an extra field
    named by its measurement (``fid2k_tf_train``, ``fid2k_tf_train_ci95_low``, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    backbone: str
    num_samples: int
    draws: int
    reference: str
    num_reference: int
    generator_sha256: str
    primary_metric: str
    interval_method: str
    fid_protocol: str | None = None
    weights_digest: str | None = None  # the FID Inception weights' tensor digest (inception backbone)
    native_size: int | None = None  # both sides cropped to the data's native size (eval.native_size)
    evaluator_sha256: str | None = None  # the domain classifier's weights file, when it scored (None: it did not)
    backbone_fallback: str | None = None
    class_names: list[str] | None = None  # conditional generators: class index -> name
    truncation: list[float] | None = None  # the truncation curve's psi values (beside none) ...
    truncation_samples: int | None = None  # ... and its images per point; None: no curve
    memorisation_suspected: bool | None = None  # None: not measured (the reference is not the training split)
    evaluator_test_accuracy_domain: float | None = None

    @classmethod
    def load(cls, path: Path) -> EvaluationReport:
        return cls.model_validate_json(Path(path).read_text())

    def metric(self, name: str) -> float | None:
        """A metric by its name, as eval.json holds it (None when absent)."""
        return (self.model_extra or {}).get(name)

    @property
    def measurement(self) -> Measurement:
        """How the primary metric was measured."""
        return self._measured(self.num_samples)

    def _measured(self, count: int) -> Measurement:
        """How ``count`` images were measured on the primary backbone (as the evaluation named them)."""
        feature_space = self.fid_protocol if self.backbone == "inception" else "domain"
        native = self.native_size if self.backbone == "inception" else None
        return Measurement(self.backbone, feature_space, count, self.reference, native)

    @property
    def value(self) -> float:
        """The primary metric's value: what the registry judges a generator by."""
        return self.metric(self.primary_metric)

    @property
    def std(self) -> float | None:
        return self.metric(f"{self.primary_metric}_std")

    @property
    def ci95(self) -> tuple[float | None, float | None]:
        return self.metric(f"{self.primary_metric}_ci95_low"), self.metric(f"{self.primary_metric}_ci95_high")

    def per_class(self) -> dict[str, dict]:
        """Each class's metrics by class name: its FID (``value``), ``std``, ``ci95``, precision, recall
        and class consistency, as far as they were measured; {} for an unconditional generator."""
        measurement, out = self.measurement, {}
        domain = Measurement("domain", "domain", self.num_samples, self.reference)
        for index, name in enumerate(self.class_names or []):
            value = self.metric(measurement.class_name("fd", index))
            if value is None:
                continue
            out[name] = {"index": index, "value": value, "std": self.metric(measurement.class_name("fd", index, "std")),
                         "ci95": [self.metric(measurement.class_name("fd", index, "ci95_low")),
                                  self.metric(measurement.class_name("fd", index, "ci95_high"))],
                         "precision": self.metric(measurement.class_name("precision", index)),
                         "recall": self.metric(measurement.class_name("recall", index)),
                         "class_consistency": self.metric(domain.class_name("class_consistency", index))}
        return out

    def truncation_curve(self) -> list[dict]:
        """The truncation curve's points, no truncation first: psi (None: none), the FID's name and value,
        precision and recall; [] when it was not measured."""
        if self.truncation_samples is None:
            return []
        measurement = self._measured(self.truncation_samples)
        points = []
        for psi in [None, *(self.truncation or [])]:
            label = truncation_label(psi)
            name = measurement.name("fd", label)
            points.append({"psi": psi, "metric": name, "value": self.metric(name),
                           "precision": self.metric(measurement.name("precision", label)),
                           "recall": self.metric(measurement.name("recall", label))})
        return points

    def summary(self) -> dict:
        """What a shipped model carries about its evaluation (ONNX metadata, registry tag, GET /v1/model):
        the primary metric with its interval and floor, KID and precision/recall, and the measurement
        (under the key ``protocol``, which shipped models already carry)."""
        measurement = self.measurement
        return {
            "primary_metric": self.primary_metric, "value": self.value, "std": self.std, "ci95": list(self.ci95),
            "real_halves_floor": self.metric(measurement.floor_name()),
            "kid_mean": self.metric(measurement.name("kid", "mean")),
            "precision": self.metric(measurement.name("precision")), "recall": self.metric(measurement.name("recall")),
            "density": self.metric(measurement.name("density")), "coverage": self.metric(measurement.name("coverage")),
            "fd_inf": self.metric(measurement.name("fd_inf")),
            "intra_class_mean": self.metric(measurement.name("ifd")),
            "memorised_share": self.metric(measurement.name("memorised", "share")),
            "memorisation_suspected": self.memorisation_suspected,
            "per_class": self.per_class(),
            "truncation": self.truncation_curve(),
            "protocol": {"backbone": self.backbone, "fid_protocol": self.fid_protocol, "num_samples": self.num_samples,
                         "reference": self.reference, "num_reference": self.num_reference,
                         "weights_digest": self.weights_digest,
                         **({"native_size": self.native_size} if self.native_size is not None else {})},
            "interval_method": self.interval_method,
            "generator_sha256": self.generator_sha256,
        }
