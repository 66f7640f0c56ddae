"""The model card of a registered version: MODEL_CARD.md in the Hugging Face model-card style (YAML
front matter, then sections) and its PNG figures, drawn by matplotlib. The register stage writes it
into reports/model_card/ and attaches it to the model version (its run's artifacts under
``model_card/`` and a summary as the version's description); `ganops models card VERSION` writes a
version's card out again.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from ganops.figures import training_curve_png, truncation_png
from ganops.io import atomic_dir
from ganops.metrics.report import EvaluationReport
from ganops.training.report import TrainSummary

CARD = "MODEL_CARD.md"
ARTIFACT_PATH = "model_card"  # in the version's run: model_card/v<version>/ (one run can register several versions)
MAX_DESCRIPTION = 5000  # MLflow's model version description column


@dataclass(frozen=True)
class CardInputs:
    """What a card says, gathered by the register stage."""

    model_name: str
    version: str
    promoted: bool
    reason: str
    run_id: str
    onnx_sha256: str
    report: EvaluationReport
    data: dict         # source, resolution, channels, class names, counts, split checksums
    recipe: dict       # model and training knobs as params.yaml holds them
    lineage: dict      # the run's git commit and lineage digests
    train_report: TrainSummary | None
    watch_rows: list[dict]  # reports/train_watch.csv
    samples_png: Path
    memorisation_png: Path | None


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _front_matter(inputs: CardInputs) -> str:
    report, summary = inputs.report, inputs.report.summary()
    metrics = [{"type": "fid" if report.backbone == "inception" else "fd", "name": report.primary_metric,
                "value": report.value, "ci95": list(report.ci95), "protocol": summary["protocol"]}]
    for key, name in (("fd_inf", report.measurement.name("fd_inf")), ("kid_mean", report.measurement.name("kid", "mean")),
                      ("precision", report.measurement.name("precision")), ("recall", report.measurement.name("recall")),
                      ("density", report.measurement.name("density")), ("coverage", report.measurement.name("coverage"))):
        if summary.get(key) is not None:
            metrics.append({"type": key, "name": name, "value": summary[key]})
    front = {
        "model_name": inputs.model_name, "version": inputs.version, "library_name": "onnxruntime",
        "tags": ["gan", "ganops", "onnx", "conditional" if inputs.data.get("conditional") else "unconditional"],
        "datasets": [inputs.data["source"]],
        **({} if inputs.data.get("conditional") else {"pipeline_tag": "unconditional-image-generation"}),
        "champion": inputs.promoted,
        "model-index": [{"name": f"{inputs.model_name} v{inputs.version}", "results": [{
            "task": {"type": "image-generation"},
            "dataset": {"name": inputs.data["source"], "type": inputs.data["source"], "split": report.reference},
            "metrics": metrics}]}],
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"


def _evaluation_section(inputs: CardInputs) -> list[str]:
    report, summary = inputs.report, inputs.report.summary()
    low, high = report.ci95
    lines = ["## Evaluation", "",
             f"Primary metric **{report.primary_metric} = {_fmt(report.value)}** (95% interval {_fmt(low)} .. "
             f"{_fmt(high)}), the distance between two halves of the reference split being "
             f"{_fmt(summary['real_halves_floor'])}.", "", f"Interval: {report.interval_method}", "",
             "| metric | value |", "|---|---|"]
    for label, key in (("FD-infinity (extrapolated to infinitely many images)", "fd_inf"),
                       ("mean intra-class distance", "intra_class_mean"), ("KID", "kid_mean"),
                       ("precision", "precision"), ("recall", "recall"), ("density", "density"),
                       ("coverage", "coverage"), ("suspiciously close to a training image", "memorised_share")):
        if summary.get(key) is not None:
            lines.append(f"| {label} | {_fmt(summary[key], 4)} |")
    per_class = summary["per_class"]
    if isinstance(per_class, dict) and per_class:
        lines += ["", "### Per class", "",
                  f"Each class's {report.primary_metric} against that class's reference images (about its share of "
                  f"the {report.num_samples} generated images; at so few images the distance is biased upwards, so "
                  "compare versions, not classes with the overall number).", "",
                  "| class | distance | 95% interval | precision | recall | class consistency |", "|---|---|---|---|---|---|"]
        for name, row in per_class.items():
            lines.append(f"| {name} | {_fmt(row['value'])} | {_fmt(row['ci95'][0])} .. {_fmt(row['ci95'][1])} | "
                         f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['class_consistency'])} |")
    return lines


def card_markdown(inputs: CardInputs, figures: dict[str, str]) -> str:
    report, data = inputs.report, inputs.data
    lines = [_front_matter(inputs), f"# {inputs.model_name} v{inputs.version}", "",
             f"A {'class-conditional ' if data.get('conditional') else ''}GAN generator of {data['resolution']}x"
             f"{data['resolution']} images with {data['channels']} channel(s), trained by ganops on {data['source']} "
             f"and served as ONNX (onnxruntime). {'Champion' if inputs.promoted else 'Not champion'}: {inputs.reason}", "",
             "## Data and lineage", "", "| what | value |", "|---|---|",
             f"| source | {data['source']} |", f"| classes | {', '.join(data.get('class_names') or []) or 'none'} |"]
    for split, checksum in data["checksums"].items():
        lines.append(f"| {split} split | {data['counts'].get(split, '?')} images, {checksum} |")
    lines += [f"| generator weights | sha256:{report.generator_sha256} |", f"| ONNX file | sha256:{inputs.onnx_sha256} |",
              f"| MLflow run | {inputs.run_id} |"]
    for key, value in inputs.lineage.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Training recipe", "", "| knob | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in inputs.recipe.items()]
    if inputs.train_report:
        lines += ["", f"Shipped snapshot: step {inputs.train_report.chosen_step} "
                  f"({inputs.train_report.chosen_because})."]
    lines += [""] + _evaluation_section(inputs)
    for key, title in (("training_curve", "In-training FID"), ("truncation", "Truncation curve"),
                       ("samples", "Samples, one row per class"), ("memorisation", "Memorisation")):
        if key not in figures:
            continue
        lines += ["", f"## {title}", "", f"![{title}]({figures[key]})"]
        if key == "truncation":
            lines += ["", f"Method: {report.truncation_method or ''}", "",
                      "| psi | distance | precision | recall |", "|---|---|---|---|"]
            lines += [f"| {'none' if p['psi'] is None else p['psi']} | {_fmt(p['value'])} | {_fmt(p['precision'])} | "
                      f"{_fmt(p['recall'])} |" for p in report.truncation_curve()]
        if key == "memorisation":
            lines += ["", f"Memorisation suspected: **{'yes' if report.memorisation_suspected else 'no'}**.", "",
                      f"Method: {report.memorisation_method or ''}"]
    lines += ["", "## Intended use and limitations", "",
              f"- Made for research and demonstration on data like {data['source']}; it generates images of its "
              "classes only, and nothing about them is a fact about any real person or object.",
              f"- Its numbers are measured under the protocol in the front matter ({report.num_samples} generated "
              f"images against the {report.reference} split); they are comparable only with numbers measured the "
              "same way (the registry never compares others).",
              "- FID at a fixed sample count is biased upwards; FD-infinity estimates the limit. Per-class distances "
              "on a few hundred images are more biased still.",
              "- The memorisation check compares feature-space distances; it finds near-copies of training images, "
              "not every way a model can leak its data.",
              "- The interval covers evaluation noise (which images were drawn), not training noise: another training "
              "seed of the same recipe can land several intervals away (docs/evaluation.md: the interval)."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, inputs: CardInputs) -> Path:
    """Write ``folder``: MODEL_CARD.md and its figures, all at once (a failure leaves the old card)."""
    chosen = inputs.train_report.chosen_step if inputs.train_report else None
    with atomic_dir(folder) as tmp:
        figures: dict[str, str] = {}
        for key, picture in (("training_curve", training_curve_png(inputs.watch_rows, chosen)),
                             ("truncation", truncation_png(inputs.report.truncation_curve()))):
            if picture is not None:
                (tmp / f"{key}.png").write_bytes(picture)
                figures[key] = f"{key}.png"
        for key, source in (("samples", inputs.samples_png), ("memorisation", inputs.memorisation_png)):
            if source is not None and source.exists():
                shutil.copyfile(source, tmp / f"{key}.png")
                figures[key] = f"{key}.png"
        (tmp / CARD).write_text(card_markdown(inputs, figures))
    return folder / CARD


def description(inputs: CardInputs) -> str:
    """The version's MLflow description: the card's headline numbers, and where the whole card is."""
    report = inputs.report
    low, high = report.ci95
    worst = sorted(((row["value"], name) for name, row in (inputs.report.per_class() or {}).items()), reverse=True)[:3]
    text = (f"{report.primary_metric} {_fmt(report.value)} (95% interval {_fmt(low)} .. {_fmt(high)}); "
            + (f"worst classes by {report.primary_metric}: {', '.join(f'{name!r} {value:.2f}' for value, name in worst)}; "
               if worst else "")
            + f"memorisation suspected: {report.memorisation_suspected}. {inputs.reason}\n\n"
            f"The model card (MODEL_CARD.md and its figures) is in this version's run artifacts under "
            f"{artifact_path(inputs.version)}/ "
            f"(`ganops models card {inputs.version}` writes it out).")
    return text[:MAX_DESCRIPTION]


def read_watch_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


LINEAGE_TAGS = ("git.commit", "git.dirty", "lineage.sha256", "lineage.params.sha256")


def run_lineage(tags: dict) -> dict:
    """The run's git commit and lineage digests (ganops.tracking.runs wrote them when train opened it)."""
    return {key: tags[key] for key in LINEAGE_TAGS if key in tags}


def run_recipe(tags: dict) -> dict:
    """The knobs training started on, flattened to dotted keys (the run's lineage.params tag)."""
    chosen = json.loads(tags.get("lineage.params", "{}"))
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = value

    for key, value in chosen.items():
        walk(key, value)
    return flat


def attach_model_card(client, name: str, version: str, run_id: str, folder: Path, inputs: CardInputs) -> None:
    """The card's files into the version's run under model_card/, its summary as the version's description."""
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path(version))
    client.update_model_version(name, version, description=description(inputs))


def artifact_path(version: str) -> str:
    return f"{ARTIFACT_PATH}/v{version}"


def download_model_card(client, name: str, version: str, out: Path) -> Path:
    """Write version ``version``'s card and figures into ``out`` (replaced as a whole)."""
    from ganops import GanopsError

    try:
        run_id = client.get_model_version(name, str(version)).run_id
    except Exception:
        raise GanopsError(f"{name} has no version {version}") from None
    with atomic_dir(out) as tmp:
        try:
            (tmp / "download").mkdir()
            found = client.download_artifacts(run_id, artifact_path(version), str(tmp / "download"))
        except Exception as error:
            raise GanopsError(f"{name} v{version} has no model card in its run {run_id} (registered before model cards, "
                              f"or its register stage failed before attaching one): {str(error)[:200]}") from None
        for item in Path(found).iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(tmp / "download")
    return out / CARD
