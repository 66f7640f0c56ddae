"""Writing the ONNX generator that serving reads: export, metadata, checker, parity with torch, fp16.

The model takes ``z`` (float32 [N, latent]) and, for conditional generators,
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
from ganops.config import ExportParams
from ganops.models import Generator
from ganops.ort_session import make_session
from ganops.serving.runtime import SPEC_KEY, OnnxGenerator
from ganops.tracking.registry import ModelInterface

log = logging.getLogger(__name__)
GENERATOR_DIGEST_KEY = "ganops.generator_sha256"  # the trained weights file the model was exported from


class ParityNotMeasurable(GanopsError):
    """The model can't be run here (no kernel for an op on this onnxruntime, say): its parity is unknown.
    The only error export.fp16_unverified may write a model past."""


class UnrunnableModel(GanopsError):
    """onnxruntime refuses the model for a reason other than a missing kernel (an invalid graph, a broken
    file, a failure while running): broken wherever it would run, never written."""


class NonFiniteOutput(GanopsError):
    """The model ran, and its images hold NaN or infinite values: measured broken, never written."""


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


def write_onnx(generator: Generator, target: Path, cfg: ExportParams, training_params: dict,
               evaluation: dict | None = None, generator_sha256: str | None = None) -> None:
    """Export ``generator`` to ``target`` (dynamic batch), add the metadata (the params it was trained
    with, its evaluation when known, the sha256 of the weights file it came from), and run the checker."""
    import onnx

    inputs = _example_inputs(generator, 2, 0)
    input_names = ["z", "labels"][: len(inputs)]
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(
        _ExportWrapper(generator).eval(), inputs, str(target), input_names=input_names, output_names=["images"],
        dynamic_shapes=tuple({0: batch} for _ in inputs), opset_version=cfg.opset, dynamo=True,
        external_data=False, optimize=True,
    )
    model = onnx.load(str(target))
    metadata = {
        SPEC_KEY: generator.spec.model_dump_json(),
        "ganops.data_checksum": generator.spec.data_checksum or "",
        "ganops.training_params": json.dumps(training_params),
        "ganops.output": json.dumps({"name": "images", "range": [-1.0, 1.0], "layout": "NCHW", "dtype": "float32"}),
        "ganops.version": __version__,
    }
    if evaluation is not None:
        metadata["ganops.metrics"] = json.dumps(evaluation)
    if generator_sha256 is not None:
        metadata[GENERATOR_DIGEST_KEY] = generator_sha256
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = "ganops generator: z [N, latent] float32 (+ labels [N] int64) -> images [N, C, H, W] in [-1, 1]"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def model_interface(model_path: Path) -> ModelInterface:
    """How the exported model is called, for the registry: MLflow's signature, inferred from a real
    run of the model on two seeded inputs, which are also its input example."""
    from mlflow.models import infer_signature

    generator = OnnxGenerator(model_path, providers=["CPUExecutionProvider"])
    z = generator.latents(2, 0)
    example: dict[str, np.ndarray] = {"z": z}
    labels = generator.labels_for(2, None)
    if labels is not None:
        example["labels"] = labels
    images = generator.run(z, labels)
    return ModelInterface(infer_signature(example, images), example, generator.spec.num_classes)


def to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def _run(model_path: Path, inputs: tuple[torch.Tensor, ...], providers: list[str] | None) -> np.ndarray:
    """The model's images for ``inputs`` under onnxruntime; ParityNotMeasurable when it can't be run here.
    (A bare session, not OnnxGenerator: that refuses a non-finite probe, which here is a measurement.)"""
    try:
        session = make_session(Path(model_path), providers)
        feeds = dict(zip(("z", "labels"), (tensor.numpy() for tensor in inputs)))
        (images,) = session.run(["images"], feeds)
    except Exception as error:  # noqa: BLE001 -- onnxruntime's own types
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel

        why = f"{type(error).__name__}: {str(error).strip()[:300]}"
        if isinstance(error, NoKernel) or isinstance(error.__cause__, NoKernel):  # a kernel this onnxruntime lacks
            raise ParityNotMeasurable(f"{Path(model_path).name} can't be run here ({why})") from None
        raise UnrunnableModel(f"{Path(model_path).name} is not a model onnxruntime can run ({why}): never written, "
                              "whatever export.fp16_unverified says") from None
    return np.asarray(images)


def max_error(generator: Generator, model_path: Path, cfg: ExportParams, providers: list[str] | None = None) -> float:
    """max |onnxruntime - torch| over ``cfg.parity_samples`` seeded inputs.

    Three different failures: ParityNotMeasurable when this onnxruntime lacks a kernel the model needs,
    UnrunnableModel when onnxruntime refuses it for any other reason, and
    NonFiniteOutput when it runs and an image holds NaN or infinite values (a measurement: the model
    is broken, wherever it would run)."""
    inputs = _example_inputs(generator, cfg.parity_samples, 1)
    with torch.no_grad():
        expected = generator(*inputs).numpy()
    got = _run(model_path, inputs, providers)
    bad = ~np.isfinite(got)
    if bad.any():
        raise NonFiniteOutput(f"its output is not finite: {int(bad.sum())} of {got.size} values NaN or infinite for "
                              f"{len(inputs[0])} seeded inputs (the torch generator's: "
                              f"{'finite' if np.isfinite(expected).all() else 'not finite either'})")
    if not np.isfinite(expected).all():
        raise NonFiniteOutput("the torch generator's own output is not finite for seeded inputs")
    if got.shape != expected.shape:
        raise GanopsError(f"{Path(model_path).name} returns images of shape {got.shape}, the generator {expected.shape}")
    return float(np.abs(got - expected).max())


def write_fp16(generator: Generator, source: Path, target: Path, cfg: ExportParams) -> dict:
    """The fp16 model, written only once its parity with torch is measured and within tolerance (or, with
    the explicit opt-out export.fp16_unverified, written unmeasured and recorded as such, when it can't
    be run here). An output measured non-finite is a NonFiniteOutput, whatever fp16_unverified says:
    "unverified" only ever means "could not be measured here"."""
    to_fp16(source, target)
    try:
        error = max_error(generator, target, cfg)
    except NonFiniteOutput as failure:
        target.unlink(missing_ok=True)
        raise NonFiniteOutput(f"the fp16 model is NOT written (whatever export.fp16_unverified says): {failure}") from None
    except ParityNotMeasurable as failure:  # e.g. a CPU-only onnxruntime without fp16 kernels for an op
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
    if not np.isfinite(error) or error > cfg.fp16_tolerance:
        raise GanopsError(f"fp16 parity failed: {error:.3g} > export.fp16_tolerance {cfg.fp16_tolerance:g}")
    return {"fp16_written": True, "fp16_verified": True, "fp16_parity_max_abs_error": error,
            "fp16_file_size_bytes": target.stat().st_size}
