"""The README and docs/*.md: every relative link reaches a file, and every `#anchor` a heading.

Anchors are GitHub's: a heading's text, lowercased, with punctuation other than '-' and '_'
dropped (the text inside backticks kept), each space turned into '-', and '-1', '-2', ...
appended to repeats. Links and headings inside fenced code blocks are not links or headings.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
# [text](target) or ![alt](target), with an optional <...> around the target and a title.
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*(?:<([^>]*)>|([^)\s]*))(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            out.append((number, line))
        elif match and set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence):
            fence = None  # a closing fence: the opening's character, at least as many
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in {"L", "N", "M"}
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2) or "")
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code."""
    out: list[tuple[int, str]] = []
    for number, line in prose_lines(text):
        # Brackets inside `code` are not link syntax; the code span itself may be link text.
        line = CODE_SPAN.sub(lambda m: re.sub(r"[\[\]()]", "_", m.group(0)), line)
        for match in LINK.finditer(line):
            out.append((number, match.group(2) if match.group(2) is not None else match.group(3)))
    return out


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """One message per relative link of `page` whose file or heading is missing."""
    problems: list[str] = []
    root, page = root.resolve(), page.resolve()
    name = page.relative_to(root).as_posix()
    for number, target in links(page.read_text(encoding="utf-8")):
        where = f"{name}:{number}: link ({target})"
        if not target:
            problems.append(f"{where}: empty target")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http, https, mailto, ...: not checked here
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not linked.is_relative_to(root):
            problems.append(f"{where}: {linked} is outside the repository")
            continue
        if not linked.exists():
            shown = linked.relative_to(root).as_posix()
            problems.append(f"{where}: no such file {shown} (relative to {name})")
            continue
        if anchor and linked.suffix.lower() == ".md":
            if linked.is_dir():
                problems.append(f"{where}: {path_part} is a directory, it has no #{anchor}")
            elif unquote(anchor) not in anchors(linked):
                shown = linked.relative_to(root).as_posix()
                problems.append(f"{where}: {shown} has no heading with the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    problems = link_problems(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines, more than {README_MAX_LINES}: move reference text "
        "into docs/ and link it"
    )


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / unquote(target.partition("#")[0])).resolve()
        for _, target in links(README.read_text(encoding="utf-8"))
        if target and not SCHEME.match(target)
    }
    orphans = [p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md") if p not in linked]
    assert DOCS.is_dir() and not orphans, f"README.md does not link these docs pages: {orphans}"


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Two commands", "two-commands"),
        ("What broke, and was fixed", "what-broke-and-was-fixed"),
        ("`rnnlm eval`, `rnnlm score`, `rnnlm sample`", "rnnlm-eval-rnnlm-score-rnnlm-sample"),
        ("`rnnlm corpus INPUT... --out DIR`", "rnnlm-corpus-input---out-dir"),
        ("Load and overload (`bench/load.py`)", "load-and-overload-benchloadpy"),
        ("The `word_language_model` recipe", "the-word_language_model-recipe"),
        ("Quality against a 5-gram (word level)", "quality-against-a-5-gram-word-level"),
        ("See [the tour](cli.md) **now**", "see-the-tour-now"),
    ],
)
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_checker_reports_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## Same\n\n## Same\n\n```\n# not a heading [x](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/a.md) [ok](docs/a.md#same-1) [ok](#top) [web](https://example.com/x.md)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#not-a-heading) [self](#nope)\n"
        "[fenced](docs/a.md#not-a-heading-x-nowheremd) `[code](missing.md)`\n",
        encoding="utf-8",
    )
    problems = link_problems(page, root=tmp_path)
    assert problems == [
        "README.md:4: link (docs/b.md): no such file docs/b.md (relative to README.md)",
        "README.md:4: link (docs/a.md#not-a-heading): "
        "docs/a.md has no heading with the anchor #not-a-heading",
        "README.md:4: link (#nope): README.md has no heading with the anchor #nope",
        "README.md:5: link (docs/a.md#not-a-heading-x-nowheremd): "
        "docs/a.md has no heading with the anchor #not-a-heading-x-nowheremd",
    ]


def test_every_sub_command_and_flag_is_in_the_cli_docs() -> None:
    """docs/cli.md names every sub-command and every long flag `--help` shows, and the
    README's sub-command list names every sub-command."""
    import argparse

    from rnnlm.cli import build_parser

    doc = (DOCS / "cli.md").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    missing = []
    for name, sub in subcommands(build_parser()).items():
        if f"`{name}`" not in doc:
            missing.append(f"sub-command {name} (docs/cli.md)")
        if f"`{name}`" not in readme:
            missing.append(f"sub-command {name} (README)")
        for parser in [sub, *subcommands(sub).values()]:
            for action in parser._actions:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help" and flag not in doc:
                        missing.append(f"{name} {flag}")
    assert not missing, missing
