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


def test_the_prefect_entry_module_turns_telemetry_off_before_prefect_is_imported():
    """`python -m pipelines.gan_pipeline` and Prefect's own import of the entrypoint: the variables are
    set at the moment Prefect's package is first imported, not after."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        f"KEYS = {list(TELEMETRY_OFF)!r}\n"
        "import os, sys\n"
        "seen = {}\n"
        "class FirstImport:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prefect' and not seen:\n"
        "            seen.update({key: os.environ.get(key) for key in KEYS})\n"
        "        return None\n"
        "sys.meta_path.insert(0, FirstImport())\n"
        "import pipelines.gan_pipeline\n"
        "print(repr(seen))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (*TELEMETRY_OFF, OPT_IN)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout.strip().splitlines()[-1]) == TELEMETRY_OFF
