"""No calls home: every entry point switches the libraries' telemetry off, unless the user opts in."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from ganops.cli import app
from ganops.telemetry import OPT_IN, TELEMETRY_OFF


def _cleared(monkeypatch) -> None:
    for key in (*TELEMETRY_OFF, OPT_IN):
        monkeypatch.delenv(key, raising=False)


def test_the_cli_turns_mlflow_prefect_and_dvc_telemetry_off(monkeypatch):
    _cleared(monkeypatch)
    from mlflow.telemetry.utils import is_telemetry_disabled
    from prefect._internal.analytics.enabled import is_telemetry_enabled

    monkeypatch.setattr("prefect._internal.analytics.enabled.is_ci_environment", lambda: False)
    result = CliRunner().invoke(app, ["fid-weights", "path"])
    assert result.exit_code == 0, result.output
    assert {key: os.environ.get(key) for key in TELEMETRY_OFF} == TELEMETRY_OFF  # ... off for every command
    assert is_telemetry_disabled() and not is_telemetry_enabled()


def test_explicit_settings_win_and_opting_in_keeps_the_defaults(monkeypatch):
    _cleared(monkeypatch)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    CliRunner().invoke(app, ["fid-weights", "path"])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false" and os.environ["DVC_NO_ANALYTICS"] == "1"
    _cleared(monkeypatch)
    monkeypatch.setenv(OPT_IN, "1")
    CliRunner().invoke(app, ["fid-weights", "path"])
    assert not any(key in os.environ for key in TELEMETRY_OFF)


def test_importing_the_flows_changes_no_environment(monkeypatch):
    import importlib
    import sys

    _cleared(monkeypatch)
    before = dict(os.environ)
    sys.modules.pop("ganops.flows", None)
    importlib.import_module("ganops.flows")
    assert dict(os.environ) == before
