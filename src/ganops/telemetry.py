"""A pipeline that runs on private data calls no outside host it was not asked to.

MLflow (usage telemetry, on by default), Prefect (SDK analytics, and the analytics of the temporary
API server it starts) and DVC (usage analytics) each report home unless told not to. Every ganops
entry point — the CLI (and so every DVC stage, ``ganops serve`` and ``ganops flow``), the Prefect
flows run as modules, and the test suite — calls :func:`disable_telemetry` first. It only fills in
variables the user has not set, so an explicit setting wins; ``GANOPS_ALLOW_TELEMETRY=1`` opts in
to the libraries' own defaults. This repository's ``.dvc/config`` also sets ``core.analytics =
false`` for a bare ``dvc`` command.
"""

from __future__ import annotations

import os

OPT_IN = "GANOPS_ALLOW_TELEMETRY"
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",  # the cross-tool convention; Prefect's SDK analytics and MLflow honour it
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def disable_telemetry() -> dict[str, str]:
    """Switch off the libraries' telemetry in this process and its children; returns what was set."""
    if os.environ.get(OPT_IN, "").lower() in ("1", "true", "yes"):
        return {}
    applied = {key: value for key, value in TELEMETRY_OFF.items() if key not in os.environ}
    os.environ.update(applied)
    return applied
