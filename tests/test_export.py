"""ONNX export: checker, metadata, dynamic batch, parity, fp16, failures that keep the old model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import copy_project, run_cli, tiny
from ganops import GanopsError
from ganops.models import load_generator
from ganops.paths import ProjectPaths
from ganops.serving import ModelError, OnnxGenerator
from ganops.stages.export import export
from ganops.stages.train import train


@pytest.fixture(scope="module")
def exported(tiny_exported) -> Path:
    """The tiny project trained and exported with export.fp16 (conftest's shared one: tests that change
    it copy it first)."""
    return tiny_exported


@pytest.mark.stage
def test_model_is_checked_and_carries_its_metadata(exported):
    model = onnx.load(str(exported / "models" / "generator.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert any(o.domain in ("", "ai.onnx") and o.version == 18 for o in model.opset_import)
    metadata = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(metadata["ganops.generator_spec"])
    assert spec == json.loads((exported / "models" / "generator.json").read_text())
    manifest = json.loads((exported / "data" / "prepared" / "manifest.json").read_text())
    assert metadata["ganops.data_checksum"] == manifest["files"]["train"]["sha256"]
    assert json.loads(metadata["ganops.training_params"])["train"]["steps"] == 20
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"z", "labels"}
    assert inputs["z"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inputs["labels"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in model.graph.output] == ["images"]


@pytest.mark.stage
def test_dynamic_batch_and_fp32_parity(exported):
    generator = load_generator(ProjectPaths(exported).generator_weights, ProjectPaths(exported).generator_spec)
    session = OnnxGenerator(exported / "models" / "generator.onnx")
    for batch in (1, 7, 64):
        z = torch.randn(batch, 8, generator=torch.Generator().manual_seed(batch))
        labels = torch.arange(batch) % 10
        with torch.no_grad():
            expected = generator(z, labels).numpy()
        got = session.run(z.numpy(), labels.numpy())
        assert got.shape == (batch, 1, 8, 8)
        assert np.abs(got - expected).max() <= 1e-4
    report = json.loads((exported / "reports" / "export.json").read_text())
    assert report["parity_max_abs_error"] <= 1e-4
    assert report["file_size_bytes"] == (exported / "models" / "generator.onnx").stat().st_size


@pytest.mark.stage
def test_report_is_deterministic(exported, tmp_path):
    """export.json is a DVC metric: the same generator exported again gives the same report, byte for
    byte (no timings: speed is measured in benchmarks/)."""
    root = tmp_path / "again"
    shutil.copytree(exported, root)
    first = (exported / "reports" / "export.json").read_text()
    export(tiny({"export": {"fp16": True}}), root)
    second = (root / "reports" / "export.json").read_text()
    assert second == first
    assert not [key for key in json.loads(second) if "latency" in key or key.endswith("_ms")]
    assert (root / "models" / "generator.onnx").read_bytes() == (exported / "models" / "generator.onnx").read_bytes()


@pytest.mark.stage
def test_fp16_model_within_its_tolerance(exported):
    fp16 = exported / "models" / "fp16" / "generator.onnx"
    report = json.loads((exported / "reports" / "export.json").read_text())
    assert report["fp16_parity_max_abs_error"] is not None and report["fp16_parity_max_abs_error"] <= 1e-2
    assert report["fp16_written"] is True and report["fp16_verified"] is True
    model = onnx.load(str(fp16))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert OnnxGenerator(fp16).run(np.zeros((2, 8), np.float32), np.array([0, 1])).dtype == np.float32


@pytest.mark.stage
def test_unverifiable_fp16_model_is_not_written_unless_opted_in(exported, tmp_path, monkeypatch):
    """An onnxruntime that can't run the fp16 model (no fp16 kernels here): nothing unverified ships."""
    import ganops.serving.export as export_module

    root = Path(shutil.copytree(exported, tmp_path / "p"))
    measure = export_module.max_error

    def fp16_unmeasurable(generator, model_path, params, providers=None):
        if "fp16" in Path(model_path).parent.name:  # the fp16 model's staging folder beside models/fp16
            raise export_module.ParityNotMeasurable("no fp16 kernel for ConvTranspose on CPUExecutionProvider")
        return measure(generator, model_path, params, providers)

    monkeypatch.setattr(export_module, "max_error", fp16_unmeasurable)
    report = export(tiny({"export": {"fp16": True}}), root)
    assert report["fp16_written"] is False and report["fp16_verified"] is False
    assert "no fp16 kernel" in report["fp16_reason"]
    assert not list((root / "models" / "fp16").iterdir())
    opted = export(tiny({"export": {"fp16": True, "fp16_unverified": True}}), root)
    assert opted["fp16_written"] is True and opted["fp16_verified"] is False
    assert (root / "models" / "fp16" / "generator.onnx").is_file()
    assert json.loads((root / "reports" / "export.json").read_text())["fp16_verified"] is False


def _nan_fp16(monkeypatch) -> None:
    """The fp16 conversion gives a model whose output is NaN: its last bias NaN in the fp16 file. (What
    weights scaled past fp16's range do on a GPU; onnxruntime's CPU provider runs these ops in fp32,
    where the same weights overflow nothing, so the NaN is put in the converted file directly.)"""
    import ganops.serving.export as export_module

    convert = export_module.to_fp16

    def to_nan_fp16(source: Path, target: Path) -> None:
        convert(source, target)
        model = onnx.load(str(target))
        (bias,) = [init for init in model.graph.initializer if init.name.endswith("to_image.bias")]
        assert bias.data_type == onnx.TensorProto.FLOAT16
        bias.CopyFrom(onnx.numpy_helper.from_array(np.full(bias.dims, np.nan, np.float16), bias.name))
        onnx.save(model, str(target))

    monkeypatch.setattr(export_module, "to_fp16", to_nan_fp16)


@pytest.mark.stage
@pytest.mark.parametrize("unverified", [True, False])
def test_an_fp16_model_measured_non_finite_is_never_written(exported, tmp_path, monkeypatch, unverified):
    """Its output was measured NaN: that is no "parity not measurable here", so export.fp16_unverified
    does not let it through. A named error, and nothing written: neither model nor the report changes."""
    from ganops.serving.export import NonFiniteOutput

    root = Path(shutil.copytree(exported, tmp_path / "p"))
    paths = ProjectPaths(root)
    before = {p: p.read_bytes() for p in (paths.onnx, paths.export_report, paths.fp16 / "generator.onnx")}
    inodes = {p: p.stat().st_ino for p in before}  # the fp32 model exports to the same bytes: not even replaced
    _nan_fp16(monkeypatch)
    with pytest.raises(NonFiniteOutput, match=r"the fp16 model is NOT written \(whatever export.fp16_unverified says\): "
                                              r"its output is not finite: \d+ of \d+ values NaN"):
        export(tiny({"export": {"fp16": True, "fp16_unverified": unverified}}), root)
    assert {p: p.read_bytes() for p in before} == before and {p: p.stat().st_ino for p in before} == inodes
    assert [p.name for p in paths.fp16.iterdir()] == ["generator.onnx"]
    assert not [p for p in (root / "models").iterdir() if p.name.startswith(".")]  # no staging, no temporary file


@pytest.mark.stage
def test_a_model_that_cannot_run_here_is_not_measurable_a_broken_one_is_refused_and_one_that_runs_is_measured(exported, tmp_path):
    """The two failures max_error tells apart: onnxruntime unable to run a model, and a model that ran."""
    from ganops.config import ExportParams
    from ganops.serving.export import NonFiniteOutput, ParityNotMeasurable, UnrunnableModel, max_error

    paths = ProjectPaths(exported)
    generator = load_generator(paths.generator_weights, paths.generator_spec)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(UnrunnableModel, match="garbage.onnx is not a model onnxruntime can run"):
        max_error(generator, garbage, ExportParams())  # broken everywhere: not merely "not measurable here"
    # a valid model with an op this onnxruntime has no kernel for (Mod on bfloat16): not measurable here
    bf16 = onnx.TensorProto.BFLOAT16
    graph = onnx.helper.make_graph([onnx.helper.make_node("Mod", ["z", "z"], ["images"])], "no_kernel",
                                   [onnx.helper.make_tensor_value_info("z", bf16, None)],
                                   [onnx.helper.make_tensor_value_info("images", bf16, None)])
    no_kernel = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    no_kernel.ir_version = 8
    onnx.save(no_kernel, str(tmp_path / "no_kernel.onnx"))
    with pytest.raises(ParityNotMeasurable, match="no_kernel.onnx can't be run here"):
        max_error(generator, tmp_path / "no_kernel.onnx", ExportParams())
    model = onnx.load(str(paths.onnx))
    (bias,) = [init for init in model.graph.initializer if init.name.endswith("to_image.bias")]
    bias.CopyFrom(onnx.numpy_helper.from_array(np.full(bias.dims, np.nan, np.float32), bias.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(NonFiniteOutput, match="its output is not finite"):
        max_error(generator, tmp_path / "nan.onnx", ExportParams())
    assert max_error(generator, paths.onnx, ExportParams()) <= 1e-4


@pytest.mark.stage
def test_unconditional_model_takes_only_z(tmp_path, tiny_prepared):
    params = tiny({"model": {"conditional": False}})
    copy_project(tiny_prepared, tmp_path)  # the data prepare(params) writes: the model section is no input of it
    train(params, tmp_path)
    report = export(params, tmp_path)
    assert report["inputs"] == ["z"]
    assert not list((tmp_path / "models" / "fp16").iterdir())  # export.fp16 is off
    session = OnnxGenerator(tmp_path / "models" / "generator.onnx")
    assert session.run(np.zeros((3, 8), np.float32)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        session.sample(2, 0, labels=1)


@pytest.mark.stage
def test_failed_parity_keeps_the_previous_model(exported, tmp_path):
    root = Path(shutil.copytree(exported, tmp_path / "p"))
    before = (root / "models" / "generator.onnx").read_bytes()
    with pytest.raises(GanopsError, match="parity failed"):
        export(tiny({"export": {"parity_tolerance": 1e-30}}), root)
    assert (root / "models" / "generator.onnx").read_bytes() == before
    assert not [p for p in (root / "models").iterdir() if p.name.endswith(".tmp")]


def _poison(weights: Path, value: float = float("nan")) -> None:
    """One value of the generator's largest tensor set to ``value``: what a diverged run leaves behind."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = max(tensors, key=lambda key: tensors[key].numel())
    tensors[name].view(-1)[0] = value
    save_file(tensors, weights, metadata={"format": "pt"})


@pytest.mark.stage
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_generator_passes_no_stage(exported, tmp_path, value):
    """NaN weights used to export (parity NaN > tol is false), score a finite FID on black images and
    become champion. Every stage that reads the generator refuses it, and keeps what it wrote before."""
    from ganops.stages.evaluate import evaluate

    root = Path(shutil.copytree(exported, tmp_path / "p"))
    paths = ProjectPaths(root)
    before = {path: path.read_bytes() for path in (paths.onnx, paths.export_report)}
    _poison(paths.generator_weights, value)
    with pytest.raises(GanopsError, match="holds NaN or infinite values; a generator with non-finite weights"):
        export(tiny({"export": {"fp16": True}}), root)
    with pytest.raises(GanopsError, match="holds NaN or infinite values"):
        evaluate(tiny(), root)
    assert {path: path.read_bytes() for path in before} == before
    assert not paths.eval_report.exists()


def test_reports_are_strict_json(tmp_path):
    from ganops.io import write_json_atomic

    target = tmp_path / "report.json"
    write_json_atomic(target, {"ok": 1.5})
    with pytest.raises(GanopsError, match=r"'parity'\['fp16'\]\[1\] is not a finite number; nothing written"):
        write_json_atomic(target, {"ok": 2.0, "parity": {"fp16": [0.1, float("nan")]}})
    with pytest.raises(GanopsError, match="'x' is not a finite"):
        write_json_atomic(target, {"x": float("-inf")})
    assert json.loads(target.read_text()) == {"ok": 1.5}


@pytest.mark.stage
def test_missing_generator_is_a_clear_error(tmp_path):
    with pytest.raises(GanopsError, match="train a generator first"):
        export(tiny(), tmp_path)


def test_bad_model_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf at all")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxGenerator(garbage)
    with pytest.raises(ModelError, match="not found"):
        OnnxGenerator(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(plain), dynamo=False)
    with pytest.raises(ModelError, match="not a ganops generator"):
        OnnxGenerator(plain)


@pytest.mark.system
def test_generate_cli_files_and_seeds(exported, tmp_path):
    model = str(exported / "models" / "generator.onnx")
    run_cli("generate", "--model", model, "--n", "20", "--seed", "3", "--out", "a.png", cwd=tmp_path)
    run_cli("generate", "--model", model, "--n", "20", "--seed", "3", "--out", "b.png", cwd=tmp_path)
    run_cli("generate", "--model", model, "--n", "20", "--seed", "4", "--out", "c.png", cwd=tmp_path)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    run_cli("generate", "--model", model, "--n", "4", "--label", "7", "--out", "sevens", cwd=tmp_path)
    names = sorted(p.name for p in (tmp_path / "sevens").iterdir())
    assert names == [f"{i:05d}_class7.png" for i in range(4)]
    from PIL import Image

    assert Image.open(tmp_path / "sevens" / names[0]).size == (8, 8)
    # --truncation: the library's truncated latents, image for image
    run_cli("generate", "--model", model, "--n", "4", "--label", "7", "--truncation", "0.5", "--out", "typical",
            cwd=tmp_path)
    expected, _ = OnnxGenerator(model).sample(4, 0, 7, truncation=0.5)
    typical = np.stack([np.asarray(Image.open(tmp_path / "typical" / name)) for name in names])
    assert np.array_equal(typical, expected[:, 0]) and not np.array_equal(
        typical, np.stack([np.asarray(Image.open(tmp_path / "sevens" / name)) for name in names]))
    for psi in ("0", "11"):
        refused = run_cli("generate", "--model", model, "--truncation", psi, cwd=tmp_path, check=False)
        assert refused.returncode == 2 and "--truncation" in refused.stderr

    bad = run_cli("generate", "--model", model, "--label", "12", "--out", "x.png", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "label 12 is outside 0..9" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("generate", "--model", "nope.onnx", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "model file not found: nope.onnx" in missing.stderr


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_each_arch_exports_with_parity(tmp_path, arch, num_classes):
    """Each model.arch exports (dynamic batch, its spec in the metadata) and the ONNX model gives the
    torch generator's images, with trained-like batch-norm statistics and per-class parameters."""
    from ganops.config import ExportParams
    from ganops.models import GeneratorSpec, build_generator
    from ganops.serving.export import max_error, write_onnx

    torch.manual_seed(0)
    spec = GeneratorSpec(latent_dim=8, g_channels=4, max_channels=16, resolution=16, channels=3,
                         num_classes=num_classes, class_names=[str(c) for c in range(num_classes)], arch=arch)
    generator = build_generator(spec)
    with torch.no_grad():  # running statistics and class parameters away from their initial values
        for module in generator.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_(1.0, 0.3)
        for _ in range(3):
            generator(torch.randn(16, 8), torch.randint(0, 3, (16,)) if num_classes else None)
    generator.eval()
    write_onnx(generator, tmp_path / "g.onnx", ExportParams(), {"model": {"arch": arch}})
    assert max_error(generator, tmp_path / "g.onnx", ExportParams()) <= 1e-4
    session = OnnxGenerator(tmp_path / "g.onnx")
    assert session.spec == spec and session.spec.arch == arch
    for batch in (1, 5):
        z = torch.randn(batch, 8, generator=torch.Generator().manual_seed(batch))
        labels = torch.arange(batch) % 3 if num_classes else None
        with torch.no_grad():
            expected = generator(z, labels).numpy()
        got = session.run(z.numpy(), labels.numpy() if num_classes else None)
        assert got.shape == (batch, 3, 16, 16) and np.abs(got - expected).max() <= 1e-4
