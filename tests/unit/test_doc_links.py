"""Every relative link and ``#anchor`` in README.md and docs/*.md resolves.

A link to a file must name one that exists (relative to the Markdown file); an anchor must be
the GitHub slug of a heading in its target file. External links (``http:``, ``https:``,
``mailto:``) are not followed, and links inside code are not links.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayq_core.settings import repo_root

REPO = repo_root()
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower-cased, without punctuation other than
    ``-`` and ``_``, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file: its headings' slugs (repeats get -1, -2 ...) and HTML
    ``name``/``id`` attributes."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ID.findall(line))
        heading = _HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, target)`` of every inline link, image and reference definition."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        prose = _CODE_SPAN.sub("", line)
        for match in _INLINE_LINK.finditer(prose):
            yield number, match.group(1)
        ref = _REF_DEF.match(prose)
        if ref:
            yield number, ref.group(1)


def broken_links(path: Path, root: Path) -> list[str]:
    """``file:line: target (why)`` for every relative link of ``path`` that does not resolve."""
    problems = []
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(root)}:{number}: {target}"
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where} (no such file)")
        elif anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{where} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                problems.append(f"{where} (no heading with that anchor in {dest.name})")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    assert broken_links(doc, REPO) == []


def test_the_checker_finds_broken_links_and_leaves_external_ones(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text(
        "# Other doc\n\n## Redis down: what pages\n\n## Twice\n## Twice\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n## `make rules` (checks)\n\n"
        "[ok](other.md) [ok](other.md#redis-down-what-pages) [ok](#make-rules-checks)\n"
        "[ok](other.md#twice-1) [ext](https://example.com/nowhere#x) [mail](mailto:a@b.c)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [self](#nope-here)\n"
        "`[code](not-a-link.md)`\n\n```\n[fenced](not-a-link.md)\n```\n"
        "[ref]: missing-ref.md\n"
    )
    assert broken_links(doc, tmp_path) == [
        "doc.md:7: missing.md (no such file)",
        "doc.md:7: other.md#nope (no heading with that anchor in other.md)",
        "doc.md:7: #nope-here (no heading with that anchor in doc.md)",
        "doc.md:13: missing-ref.md (no such file)",
    ]
