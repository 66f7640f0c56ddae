"""The documentation: the README stays short and quotes only current figures, and the MkDocs site
(mkdocs.yml, docs/) builds with --strict, so a broken link or anchor, a missing snippet or a page left
out of the nav fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300


def _current_figures() -> str:
    """The table of current figures at the top of benchmarks/RESULTS.md (between its snippet markers)."""
    text = (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    start, end = "<!-- --8<-- [start:current] -->", "<!-- --8<-- [end:current] -->"
    assert start in text and end in text, "benchmarks/RESULTS.md lost the markers around its table of current figures"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, over {README_MAX_LINES}: move reference to docs/"


def test_the_readme_quotes_its_figures_from_the_current_table():
    """Every number in a bold span of the README (its expected results) is in the table of current figures."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = _current_figures()
    quoted = [span for span in re.findall(r"\*\*(.+?)\*\*", readme)  # not the lead-ins ("**On a GPU.**")
              if re.search(r"\d", span) and not span.endswith(".")]
    assert quoted, "the README's quick start gives no expected result"
    for span in quoted:
        for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", span):
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", table), \
                f"README quotes {number} ({span!r}), which the current figures of benchmarks/RESULTS.md lack"


@pytest.mark.system
def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs-material is a dev extra: ./setup.sh installs it")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "mkdocs build warned:\n" + "\n".join(warnings)
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start" in home and "samples.png" in home, "the site's home page is not the README"
    assert "14.62" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8"), \
        "the benchmarks page lacks the table of current figures"
