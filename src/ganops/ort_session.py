"""onnxruntime sessions, built in one place for every ONNX model ganops runs.

The exported generator (ganops.serving) and the FID Inception network on the CPU (ganops.metrics)
both run under onnxruntime. This module sits below both, so neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from ganops import GanopsError


class ModelError(GanopsError):
    """A model file that can't be loaded or isn't a ganops generator."""


def available_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, CPU always (as the fallback)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a sweep's trial is pinned to its share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_session(path: Path, providers: list[str] | None = None, intra_op_threads: int | None = None):
    """An onnxruntime session with every graph optimisation on and explicit thread counts."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or available_providers())
    except Exception as error:  # onnxruntime raises its own exception types (kept as the cause)
        raise ModelError(f"{path}: not a loadable ONNX model ({str(error).strip()[:300]})") from error
