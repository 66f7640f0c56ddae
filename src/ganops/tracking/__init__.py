"""MLflow run lifecycle, lineage, the model registry and promotion."""

from ganops.tracking.registry import list_versions, promote, register, rollback
from ganops.tracking.store import TrackingError

__all__ = ["TrackingError", "list_versions", "promote", "register", "rollback"]
