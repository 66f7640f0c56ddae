"""Production inference: the exported generator under onnxruntime, where models come from, the
`ganops generate` and `ganops serve` commands, the HTTP service."""

from ganops.ort_session import ModelError, available_providers
from ganops.serving.runtime import OnnxGenerator

__all__ = ["ModelError", "OnnxGenerator", "available_providers"]
