"""reports/eval.json and its siblings, written and read back: the record that export, register, the
registry, the sweep and the Prefect summary read an evaluation through.

On disk an evaluation is four files, so that `dvc metrics show` is a table a person reads:
eval.json (DVC metrics: what was measured and the headline numbers), eval_record.json (how: the
methods' prose, the digests, the classes and truncation settings), eval_per_class.json and
eval_truncation.json (DVC plots: a row per class, a row per truncation psi). In memory it is one
flat record, every metric named by its measurement (``fid2k_tf_train_class3``, ``fid100_tf_train_psi0.7``)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ganops.io import write_json_atomic
from ganops.metrics.names import Measurement, truncation_label
from ganops.paths import EVAL_SIBLINGS

# eval.json's fields besides its numbers: what was measured, in a few words each
MEASURED = ("backbone", "num_samples", "draws", "reference", "num_reference", "fid_protocol", "native_size",
            "primary_metric")


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
        """eval.json at ``path`` with its siblings (an eval.json without them holds the whole record)."""
        path = Path(path)
        siblings = {key: path.with_name(name) for key, name in EVAL_SIBLINGS.items()}
        fields = json.loads(path.read_text())
        if siblings["record"].exists():
            fields |= json.loads(siblings["record"].read_text())
        partial = cls.model_validate(fields)  # the measurement and the class names: what the rows are named by
        for key, names_of in (("per_class", lambda row: partial._class_names(row["index"])),
                              ("truncation", lambda row: partial._truncation_names(row["psi"]))):
            if siblings[key].exists():
                for row in json.loads(siblings[key].read_text()):
                    names = names_of(row)
                    fields |= {names[column]: value for column, value in row.items() if column in names}
        return cls.model_validate(fields)

    def write(self, path: Path) -> list[Path]:
        """Write the evaluation as eval.json at ``path`` and its siblings; returns the four paths."""
        path, flat = Path(path), self.model_dump(exclude_unset=True)  # the fields as given, a None included
        rows = {"per_class": [], "truncation": []}
        split: set[str] = set()
        for index, name in enumerate(self.class_names or []):
            names = self._class_names(index)
            row = {column: flat[flat_name] for column, flat_name in names.items() if flat_name in flat}
            if row:
                rows["per_class"].append({"class": name, "index": index, "metric": names["value"], **row})
                split |= set(names.values())
        for _, point in self._curve_points():
            names = self._truncation_names(point)
            rows["truncation"].append({"psi": point, "metric": names["value"],
                                       **{column: flat.get(flat_name) for column, flat_name in names.items()}})
            split |= set(names.values())
        metrics = {key: value for key, value in flat.items() if key not in split and
                   (key in MEASURED or key not in type(self).model_fields and not isinstance(value, str))}
        metrics |= {key: flat[key] for key in ("memorisation_suspected", "evaluator_test_accuracy_domain") if key in flat}
        record = {key: value for key, value in flat.items() if key not in split and key not in metrics}
        files = {path: metrics, path.with_name(EVAL_SIBLINGS["record"]): record,
                 path.with_name(EVAL_SIBLINGS["per_class"]): rows["per_class"],
                 path.with_name(EVAL_SIBLINGS["truncation"]): rows["truncation"]}
        for file, content in files.items():
            write_json_atomic(file, content)
        return list(files)

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
        out = {}
        for index, name in enumerate(self.class_names or []):
            row = {column: self.metric(flat) for column, flat in self._class_names(index).items()}
            if row["value"] is None:
                continue
            out[name] = {"index": index, "value": row["value"], "std": row["std"], "ci95": [row["ci95_low"], row["ci95_high"]],
                         "precision": row["precision"], "recall": row["recall"],
                         "class_consistency": row["class_consistency"]}
        return out

    def truncation_curve(self) -> list[dict]:
        """The truncation curve's points, no truncation first: psi (None: none), the FID's name and value,
        precision and recall; [] when it was not measured."""
        points = []
        for psi, point in self._curve_points():
            names = self._truncation_names(point)
            points.append({"psi": psi, "metric": names["value"], "value": self.metric(names["value"]),
                           "precision": self.metric(names["precision"]), "recall": self.metric(names["recall"])})
        return points

    def _class_names(self, index: int) -> dict[str, str]:
        """The flat names of the columns of class ``index``'s row in eval_per_class.json."""
        measurement = self.measurement
        domain = Measurement("domain", "domain", self.num_samples, self.reference)
        return {"value": measurement.class_name("fd", index), "std": measurement.class_name("fd", index, "std"),
                "ci95_low": measurement.class_name("fd", index, "ci95_low"),
                "ci95_high": measurement.class_name("fd", index, "ci95_high"),
                "precision": measurement.class_name("precision", index),
                "recall": measurement.class_name("recall", index),
                "class_consistency": domain.class_name("class_consistency", index)}

    def _curve_points(self) -> list[tuple[float | None, str]]:
        """The truncation curve's psi values, None (no truncation) first, each with the name
        eval_truncation.json gives it ("none", "0.7"); [] when the curve was not measured."""
        if self.truncation_samples is None:
            return []
        return [(psi, truncation_label(psi).removeprefix("psi")) for psi in [None, *(self.truncation or [])]]

    def _truncation_names(self, point: str) -> dict[str, str]:
        """The flat names of the columns of the truncation row ``point`` ("none", "0.7") in eval_truncation.json."""
        measurement = self._measured(self.truncation_samples)
        label = truncation_label(None if point == "none" else float(point))
        return {"value": measurement.name("fd", label), "precision": measurement.name("precision", label),
                "recall": measurement.name("recall", label)}

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
