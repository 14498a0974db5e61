"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``).

- A page whose source is a line ``<!-- include FILE.md -->`` shows that file of the repository
  root instead (BENCHMARKS.md, CONTRIBUTING.md, CHANGELOG.md), its links rewritten from the
  root's point of view to the site's: ``docs/x.md`` becomes ``x.md``, ``BENCHMARKS.md`` the
  benchmarks page. The files stay readable on their own, and nothing is copied.
- Docstrings are written with Sphinx roles (``:func:`~triform.x.f```); the API pages show them
  as plain code names, and a paragraph's closing ``::`` (an RST literal block) as ``:``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"^<!-- include (\S+\.md) -->$", re.MULTILINE)
# root files that are pages of the site, and their pages
PAGES = {
    "BENCHMARKS.md": "benchmarks.md",
    "CONTRIBUTING.md": "contributing.md",
    "CHANGELOG.md": "changelog.md",
}
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>([^<]*)</code>")


def _relink(text: str) -> str:
    text = text.replace("](docs/", "](")
    for name, page in PAGES.items():
        text = text.replace(f"]({name}", f"]({page}")
    return text


def _include(match: re.Match) -> str:
    return _relink((ROOT / match.group(1)).read_text(encoding="utf-8"))


def on_page_markdown(markdown: str, **kwargs) -> str:
    return INCLUDE.sub(_include, markdown)


def _role(match: re.Match) -> str:
    name = match.group(1)
    if name.startswith("~"):  # Sphinx: show the last component only
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name.lstrip('.')}</code>"


def on_page_content(html: str, **kwargs) -> str:
    if 'class="doc ' not in html:  # not an API page
        return html
    html = ROLE.sub(_role, html)
    return html.replace("<p>::</p>", "").replace("::</p>", ":</p>")
