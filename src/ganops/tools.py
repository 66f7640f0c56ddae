"""The command-line tools ganops runs (dvc, git): found beside this interpreter first, run with their
output captured. The Prefect flows and the sweeps call them through here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def tool(name: str) -> str:
    """dvc and ganops live beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def run_tool(args: list[str], cwd: Path, env: dict[str, str] | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd`` in ``tool_env(env)``, stdout and stderr captured as text."""
    return subprocess.run(args, cwd=cwd, env=tool_env(env), capture_output=True, text=True, timeout=timeout)


def tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a tool runs in: this process's, with this interpreter's folder first on PATH and
    progress bars off, then ``env`` on top."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "TQDM_DISABLE": "1", **(env or {})}
