"""Production inference: onnxruntime sessions, the generate CLI, the HTTP service."""

from ganops.serving.runtime import ModelError, OnnxGenerator, available_providers, make_session

__all__ = ["ModelError", "OnnxGenerator", "available_providers", "make_session"]
