"""MkDocs hook: the site's home page is the project's README.md.

The README links the reference pages as ``docs/<page>.md`` and the benchmark results as
``benchmarks/RESULTS.md``; on the site, whose pages are the contents of ``docs/``, those are
``<page>.md`` and ``benchmarks.md``. Every other relative link of the README is left as it is, so a
link to a file outside the site fails ``mkdocs build --strict`` (tests/test_docs.py).
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
ON_THE_SITE = {"benchmarks/RESULTS.md": "benchmarks.md", "docs/": ""}
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)")


def _site_target(match: re.Match) -> str:
    target = match.group(1)
    path, hash_, anchor = target.partition("#")
    for prefix, replacement in ON_THE_SITE.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            path = replacement + path[len(prefix):] if prefix.endswith("/") else replacement
            break
    return f"]({path}{hash_}{anchor})"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return LINK.sub(_site_target, README.read_text(encoding="utf-8"))
