"""ganops: a production MLOps pipeline for image GANs."""

__version__ = "0.1.0"


class GanopsError(Exception):
    """An error the user can fix (bad params, bad data, missing inputs); shown without a traceback."""
