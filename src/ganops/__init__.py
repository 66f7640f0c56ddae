"""ganops: a production MLOps pipeline for image GANs."""

__version__ = "0.1.0"


class GanopsError(Exception):
    """An error the user can fix (bad params, bad data, missing inputs); shown without a traceback.

    ``exit_code`` tells orchestrators whether retrying can help: 2 means fix the input first,
    75 (EX_TEMPFAIL) means a service was unavailable and a retry may succeed.
    """

    exit_code = 2
