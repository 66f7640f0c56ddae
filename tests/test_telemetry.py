"""No calls home: every entry point switches the libraries' telemetry off, unless the user opts in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO, write_params
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


# Installed as sitecustomize in the entry point's process: when the first library that reports home
# is imported, it writes down the telemetry variables of that moment, then ends the process (nothing
# after that import runs: no server, no pipeline).
FIRST_IMPORT_PROBE = """
import json, os, sys

class FirstImport:
    def find_spec(self, name, path=None, target=None):
        if name in {watched!r}:
            with open(os.environ["GANOPS_PROBE_OUT"], "w") as out:
                json.dump({{"library": name, "environ": {{key: os.environ.get(key) for key in {keys!r}}}}}, out)
            os._exit(0)
        return None

sys.meta_path.insert(0, FirstImport())
"""
PHONES_HOME = ("mlflow", "prefect", "dvc")  # each starts or sends its telemetry from the process that imports it


def _at_first_import(command: list[str], cwd: Path, tmp_path: Path) -> dict:
    """What ``command`` had set of ganops' telemetry variables when it first imported a library that
    reports home, in an environment where none of them is set."""
    probe = tmp_path / "probe"
    probe.mkdir(parents=True)
    (probe / "sitecustomize.py").write_text(FIRST_IMPORT_PROBE.format(watched=PHONES_HOME, keys=list(TELEMETRY_OFF)))
    out = tmp_path / "first_import.json"
    env = {k: v for k, v in os.environ.items() if k not in (*TELEMETRY_OFF, OPT_IN)}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(probe), env.get("PYTHONPATH")])), GANOPS_PROBE_OUT=str(out))
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"{command} imported none of {PHONES_HOME}:\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


GANOPS = str(Path(sys.executable).parent / "ganops")


@pytest.mark.system
@pytest.mark.parametrize(("command", "library"), [
    ([GANOPS, "models", "list"], "mlflow"),
    ([GANOPS, "flow", "run"], "prefect"),
    ([sys.executable, "-m", "ganops.cli", "models", "list"], "mlflow"),
], ids=["models-list", "flow-run", "python-m-cli"])
def test_the_cli_turns_telemetry_off_before_the_first_library_import(command, library, tmp_path):
    write_params(tmp_path / "params.yaml", {"mlflow": {"enabled": True}})
    first = _at_first_import(command, tmp_path, tmp_path)
    assert first == {"library": library, "environ": TELEMETRY_OFF}


@pytest.mark.system
def test_ganops_serve_turns_telemetry_off_before_the_first_library_import(tmp_path):
    """From the registry: the service imports MLflow to find its model."""
    first = _at_first_import([GANOPS, "serve", "--model", "models:/ganops-generator@champion"], tmp_path, tmp_path)
    assert first == {"library": "mlflow", "environ": TELEMETRY_OFF}


@pytest.mark.system
def test_python_m_ganops_flows_turns_telemetry_off_before_prefect_is_imported(tmp_path):
    first = _at_first_import([sys.executable, "-m", "ganops.flows"], tmp_path, tmp_path)
    assert first == {"library": "prefect", "environ": TELEMETRY_OFF}


@pytest.mark.system
def test_the_prefect_entry_module_turns_telemetry_off_before_prefect_is_imported(tmp_path):
    """`python -m pipelines.gan_pipeline`, and Prefect's own load of the entrypoint file."""
    first = _at_first_import([sys.executable, "-m", "pipelines.gan_pipeline"], REPO, tmp_path)
    assert first == {"library": "prefect", "environ": TELEMETRY_OFF}
    first = _at_first_import([sys.executable, "pipelines/gan_pipeline.py"], REPO, tmp_path / "file")
    assert first == {"library": "prefect", "environ": TELEMETRY_OFF}
