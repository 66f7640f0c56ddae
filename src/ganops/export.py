"""The export stage: the EMA generator as ONNX, checked and parity-tested. Its report holds only
what the same inputs reproduce (parity, sizes); speed is measured in benchmarks/inference.py.

models/generator.onnx takes ``z`` (float32 [N, latent]) and, for conditional generators,
``labels`` (int64 [N]); it returns ``images`` (float32 [N, C, H, W] in [-1, 1]). N is dynamic.
Metadata properties carry the generator spec, the training data checksum and the training params.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ganops import GanopsError, __version__
from ganops.config import Params
from ganops.io import file_sha256, atomic_dir, atomic_path, write_json_atomic
from ganops.models import Generator, load_trained_generator
from ganops.paths import ProjectPaths
from ganops.serving.runtime import SPEC_KEY, OnnxGenerator
from ganops.tracking.runs import log_to_pipeline_run

log = logging.getLogger(__name__)


class _ExportWrapper(torch.nn.Module):
    """Fixes the graph's signature: (z) or (z, labels) -> images."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)


def _example_inputs(generator: Generator, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.spec.latent_dim, generator=rng)
    if generator.spec.conditional:
        return z, torch.randint(0, generator.spec.num_classes, (n,), generator=rng)
    return (z,)


def write_onnx(generator: Generator, target: Path, params: Params, evaluation: dict | None = None) -> None:
    """Export ``generator`` to ``target`` (dynamic batch), add the metadata (with its evaluation, when
    known), and run the checker."""
    import onnx

    inputs = _example_inputs(generator, 2, 0)
    input_names = ["z", "labels"][: len(inputs)]
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(
        _ExportWrapper(generator).eval(), inputs, str(target), input_names=input_names, output_names=["images"],
        dynamic_shapes=tuple({0: batch} for _ in inputs), opset_version=params.export.opset, dynamo=True,
        external_data=False, optimize=True,
    )
    model = onnx.load(str(target))
    metadata = {
        SPEC_KEY: generator.spec.model_dump_json(),
        "ganops.data_checksum": generator.spec.data_checksum or "",
        "ganops.training_params": json.dumps({"model": params.model.model_dump(), "train": params.train.model_dump()}),
        "ganops.output": json.dumps({"name": "images", "range": [-1.0, 1.0], "layout": "NCHW", "dtype": "float32"}),
        "ganops.version": __version__,
    }
    if evaluation is not None:
        metadata["ganops.metrics"] = json.dumps(evaluation)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = "ganops generator: z [N, latent] float32 (+ labels [N] int64) -> images [N, C, H, W] in [-1, 1]"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def _to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def _max_error(generator: Generator, model_path: Path, params: Params, providers: list[str] | None = None) -> float:
    inputs = _example_inputs(generator, params.export.parity_samples, 1)
    with torch.no_grad():
        expected = generator(*inputs).numpy()
    session = OnnxGenerator(model_path, providers=providers)
    got = session.run(*(t.numpy() for t in inputs))
    return float(np.abs(got - expected).max())


def _write_fp16(generator: Generator, source: Path, target: Path, params: Params) -> dict:
    """The fp16 model, written only once its parity with torch is measured and within tolerance (or, with
    the explicit opt-out export.fp16_unverified, written unmeasured and recorded as such)."""
    cfg = params.export
    _to_fp16(source, target)
    try:
        error = _max_error(generator, target, params)
    except GanopsError as failure:  # e.g. a CPU-only onnxruntime without fp16 kernels for an op
        if not cfg.fp16_unverified:
            target.unlink()
            log.warning("fp16 model NOT written: its parity could not be measured here (%s); set "
                        "export.fp16_unverified: true to write it unverified", failure)
            return {"fp16_written": False, "fp16_verified": False, "fp16_parity_max_abs_error": None,
                    "fp16_reason": f"parity not measurable here: {failure}"[:500]}
        log.warning("fp16 model written UNVERIFIED (export.fp16_unverified): %s", failure)
        return {"fp16_written": True, "fp16_verified": False, "fp16_parity_max_abs_error": None,
                "fp16_reason": f"written unverified (export.fp16_unverified): {failure}"[:500],
                "fp16_file_size_bytes": target.stat().st_size}
    if error > cfg.fp16_tolerance:
        raise GanopsError(f"fp16 parity failed: {error:.3g} > export.fp16_tolerance {cfg.fp16_tolerance:g}")
    return {"fp16_written": True, "fp16_verified": True, "fp16_parity_max_abs_error": error,
            "fp16_file_size_bytes": target.stat().st_size}


def _evaluation_of_this_generator(paths: ProjectPaths) -> dict | None:
    """reports/eval.json's summary, if it scored exactly the generator being exported (dvc.yaml runs
    evaluate before export); otherwise the model ships without metrics rather than with someone else's."""
    from ganops.metrics.names import evaluation_summary

    report_path = paths.reports / "eval.json"
    if not report_path.exists():
        log.warning("no %s: the exported model carries no evaluation metrics", report_path)
        return None
    report = json.loads(report_path.read_text())
    if report.get("generator_sha256") != file_sha256(paths.generator_weights):
        log.warning("%s scored another generator: the exported model carries no evaluation metrics "
                    "(run `dvc repro evaluate` first)", report_path)
        return None
    return evaluation_summary(report)


def export(params: Params, root: Path = Path(".")) -> dict:
    """Write models/generator.onnx (and models/fp16/ when export.fp16) and reports/export.json."""
    cfg = params.export
    paths = ProjectPaths(root)
    generator = load_trained_generator(root, torch.device("cpu"))
    onnx_path = paths.models / "generator.onnx"
    report: dict = {"opset": cfg.opset, "inputs": ["z", "labels"] if generator.spec.conditional else ["z"],
                    "output": "images", "output_range": [-1.0, 1.0], "layout": "NCHW"}
    with atomic_path(onnx_path) as tmp:
        write_onnx(generator, tmp, params, _evaluation_of_this_generator(paths))
        error = _max_error(generator, tmp, params, providers=["CPUExecutionProvider"])
        if error > cfg.parity_tolerance:
            raise GanopsError(f"ONNX parity failed: max |onnxruntime - torch| = {error:.3g} > export.parity_tolerance "
                              f"{cfg.parity_tolerance:g}; the previous {onnx_path.name} is kept")
        report["parity_max_abs_error"] = error
        report["file_size_bytes"] = tmp.stat().st_size

    with atomic_dir(paths.models / "fp16") as staging:
        if cfg.fp16:
            report.update(_write_fp16(generator, onnx_path, staging / "generator.onnx", params))
    write_json_atomic(paths.reports / "export.json", report)
    log_to_pipeline_run(params, root, "export", report)
    log.info("exported %s: parity %.2e, %d bytes", onnx_path, report["parity_max_abs_error"], report["file_size_bytes"])
    return report
