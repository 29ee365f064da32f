"""The README and docs/ link to each other's sections: every relative link must lead to a file that exists and, with
an anchor, to a heading that file has (GitHub's anchors), so that moving a section cannot leave a dead link."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "docker" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def without_fences(text: str) -> str:
    """The text outside fenced code blocks, where a `#` line is a comment, not a heading."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans, where a bracket is not a link."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of `path`'s headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in without_fences(path.read_text()).splitlines():
        if re.match(r"#{1,6} ", line):
            anchor = github_anchor(line)
            found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
            seen[anchor] += 1
    return found


def dead_links(document: Path, root: Path = REPO) -> list[str]:
    """Each relative link of `document` that leads nowhere, with why (files named relative to `root`)."""
    dead = []
    for target in LINK.findall(without_code(document.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{target}: no such heading in {linked.relative_to(root)}")
    return dead


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document):
    assert dead_links(document) == []


def test_the_check_finds_a_dead_file_and_a_dead_anchor_but_not_code(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section, with (punctuation)\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section-with-punctuation) [self](#page) [2nd](other.md#twice-1) "
                    "[gone](missing.md) [no anchor](other.md#nowhere) `[in code](missing.md)`\n\n"
                    "```\n[fenced](missing.md)\n```\n")
    assert dead_links(page, tmp_path) == ["missing.md: no such file", "other.md#nowhere: no such heading in other.md"]
