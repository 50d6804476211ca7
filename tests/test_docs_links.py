"""Every relative link in the docs reaches a file, and every ``#anchor`` a heading of it.

The README, docs/ and the client's README link to each other's sections; a heading renamed
without its links leaves a reader at the top of a long page. Anchors follow GitHub's rule:
lower case, punctuation other than ``-`` and ``_`` dropped, spaces turned into ``-``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "client" / "README.md",
               *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*/README.md")])
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(match.group(1)) for match in _HEADING.finditer(text)}


def test_slug_follows_githubs_rule() -> None:
    assert slug("Deploy on Fly.io") == "deploy-on-flyio"
    assert slug("100,000 users") == "100000-users"
    assert slug("`RELAY_CHANNELS`: templates") == "relay_channels-templates"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_reach_their_file_and_heading(doc: Path) -> None:
    broken = []
    for match in _LINK.finditer(_FENCE.sub("", doc.read_text())):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
