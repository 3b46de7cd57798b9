"""The documentation holds together.

* Every relative link and image in ``README.md`` and ``docs/`` (Markdown ``[..](path#anchor)``,
  ``![..](path)``, reference definitions, HTML ``<img src>`` / ``<a href>``) points at a file of the
  repository, and every anchor at a heading of the target page, by GitHub's slug rules. Links in
  fenced code blocks, inline code and HTML comments are not links; ``http(s):``, ``mailto:`` and
  other schemes are not checked (no network).
* The README's "The two commands" section shows ``./run_local.sh`` and ``./run_tests.sh`` and, as
  plain commands, exactly what the two scripts run from ``.venv/bin/``, flag for flag, so a script
  cannot change without its README.

Standard library and pytest only; each check is also run on a small synthetic case, so it cannot
pass by finding nothing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TWO_COMMANDS = "The two commands"
VENV_BIN = ".venv/bin/"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
_INLINE_LINK = re.compile(
    r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"
    r"\(\s*(<[^>]*>|[^()\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.MULTILINE)
_HTML_LINK = re.compile(
    r"<(img|a|source)\b[^>]*?\b(?:src|href|srcset)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE
)
_HTML_ID = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


# ---------------------------------------------------------------------------------------------
# Markdown structure


@dataclass(frozen=True)
class Fenced:
    """A fenced code block: its info string (``bash``) and its body."""

    info: str
    body: str


def split_fences(text: str) -> tuple[str, list[Fenced]]:
    """The text with every fenced code block's lines blanked (line numbers kept), and the blocks."""
    prose: list[str] = []
    blocks: list[Fenced] = []
    fence: str | None = None
    info = ""
    body: list[str] = []
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None:
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                fence, info, body = m.group(1), m.group(2).strip(), []
                prose.append("")
            else:
                prose.append(line)
            continue
        prose.append("")
        closing = m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)
        if closing and not m.group(2).strip():
            blocks.append(Fenced(info, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    if fence is not None:  # an unclosed fence runs to the end of the document
        blocks.append(Fenced(info, "\n".join(body)))
    return "\n".join(prose), blocks


def _blank(match: re.Match[str]) -> str:
    """A placeholder for a code span or comment that keeps the line count."""
    return "code" + "\n" * match.group(0).count("\n")


def prose_of(text: str) -> str:
    """The text outside code blocks, inline code and HTML comments (where links can be)."""
    prose, _ = split_fences(text)
    return _CODE_SPAN.sub(_blank, _HTML_COMMENT.sub(_blank, prose))


def headings(text: str) -> list[str]:
    """ATX headings' raw text, in order, outside code blocks."""
    prose, _ = split_fences(text)
    return [m.group(2) for line in prose.split("\n") if (m := _HEADING.match(line))]


def heading_text(raw: str) -> str:
    """A heading as GitHub renders it to text: code spans keep their text, emphasis markers, links'
    targets and HTML tags go."""
    parts = re.split(r"(`+[^`]*`+)", raw)
    out = []
    for part in parts:
        if part.startswith("`"):
            out.append(part.strip("`").strip())
            continue
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)
        part = re.sub(r"<[^>]+>", "", part)
        part = re.sub(r"\*+", "", part)
        part = re.sub(r"(?<!\w)_+([^_]+?)_+(?!\w)", r"\1", part)
        out.append(part)
    return "".join(out).strip()


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation other than ``-`` and ``_``
    removed, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a page: its headings' slugs (a repeated slug gets ``-1``, ``-2``, ...) and
    HTML ``id``/``name`` attributes."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for raw in headings(text):
        base = github_slug(heading_text(raw))
        slug = base
        while slug in out:
            seen[base] = seen.get(base, 0) + 1
            slug = f"{base}-{seen[base]}"
        out.add(slug)
    out.update(_HTML_ID.findall(prose_of(text)))
    return out


# ---------------------------------------------------------------------------------------------
# Links


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str
    image: bool

    def __str__(self) -> str:
        kind = "image" if self.image else "link"
        return f"{self.source}:{self.line}: {kind} {self.target!r}"


def links(path: Path) -> list[Link]:
    """Every link and image target of a Markdown file, outside code."""
    text = prose_of(path.read_text(encoding="utf-8"))

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    found: list[Link] = []

    def inline(chunk: str, offset: int) -> None:
        for m in _INLINE_LINK.finditer(chunk):
            target = m.group(3).strip("<>")
            found.append(Link(path, line_of(offset + m.start()), target, m.group(1) == "!"))
            inline(m.group(2), offset + m.start(2))  # an image inside a link's text

    inline(text, 0)
    for m in _REFERENCE_DEF.finditer(text):
        found.append(Link(path, line_of(m.start()), m.group(1).strip("<>"), False))
    for m in _HTML_LINK.finditer(text):
        target = m.group(2).split()[0]  # srcset: the first candidate
        found.append(Link(path, line_of(m.start()), target, m.group(1).lower() != "a"))
    return found


def is_external(target: str) -> bool:
    return bool(_SCHEME.match(target)) or target.startswith("//")


def resolve(link: Link, root: Path) -> Path:
    """The file or directory a relative link points at (``/x`` is relative to the root)."""
    path_part = unquote(link.target.split("#", 1)[0].split("?", 1)[0])
    if not path_part:
        return link.source
    if path_part.startswith("/"):
        return root / path_part.lstrip("/")
    return link.source.parent / path_part


def problems(link: Link, root: Path) -> str | None:
    """Why a link does not resolve, or None when it does (or is external)."""
    if is_external(link.target):
        return None
    if not link.target:
        return "empty target"
    dest = resolve(link, root).resolve()
    if not dest.is_relative_to(root.resolve()):
        return "points outside the repository"
    if not dest.exists():
        return "no such file"
    if link.image and not dest.is_file():
        return "not a file"
    if "#" in link.target:
        fragment = unquote(link.target.split("#", 1)[1])
        if dest.is_dir():
            return f"anchor #{fragment} on a directory"
        if dest.suffix.lower() in {".md", ".markdown"}:
            if fragment not in anchors(dest.read_text(encoding="utf-8")):
                return f"no heading with anchor #{fragment} in {dest.name}"
        elif not _LINE_ANCHOR.match(fragment):
            return f"anchor #{fragment} on a file that is not Markdown"
    return None


def broken_links(paths: list[Path], root: Path) -> list[str]:
    """One message per link of ``paths`` that does not resolve."""
    out = []
    for path in paths:
        for link in links(path):
            if (why := problems(link, root)) is not None:
                out.append(f"{link}: {why}")
    return out


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


# ---------------------------------------------------------------------------------------------
# Commands


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _normalise(tokens: list[str]) -> list[str]:
    if tokens and tokens[0].startswith(VENV_BIN):
        tokens = [tokens[0][len(VENV_BIN) :], *tokens[1:]]
    return tokens


def script_commands(text: str) -> list[list[str]]:
    """What a shell script runs from ``.venv/bin/``, as argument lists without the prefix.

    ``"${name[@]}"`` is replaced by the script's literal assignment ``name=(...)`` (the default
    inputs), and ``"$@"`` (the user's extra arguments) is dropped.
    """
    arrays = {
        name: shlex.split(value)
        for name, value in re.findall(r"^\s*(\w+)=\(([^)$]*)\)\s*$", text, re.MULTILINE)
    }
    commands = []
    for line in logical_lines(text):
        if not line.strip().startswith(VENV_BIN):
            continue
        tokens: list[str] = []
        for token in shlex.split(line, comments=True):
            if token == "$@":
                continue
            if m := re.fullmatch(r"\$\{(\w+)\[@\]\}", token):
                tokens.extend(arrays.get(m.group(1), [token]))
            else:
                tokens.append(token)
        commands.append(_normalise(tokens))
    return commands


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text (up to the next heading of level 1
    or 2), code blocks included."""
    prose, _ = split_fences(text)
    lines, prose_lines = text.split("\n"), prose.split("\n")
    start = None
    for i, line in enumerate(prose_lines):
        m = _HEADING.match(line)
        if not m:
            continue
        if start is not None and len(m.group(1)) <= 2:
            return "\n".join(lines[start:i])
        if len(m.group(1)) == 2 and heading_text(m.group(2)) == title:
            start = i + 1
    if start is None:
        raise LookupError(f"no section '## {title}'")
    return "\n".join(lines[start:])


def shell_commands(markdown: str) -> list[list[str]]:
    """The commands of the shell code blocks of a Markdown text, in order, as argument lists."""
    _, blocks = split_fences(markdown)
    commands = []
    for block in blocks:
        if block.info.split()[:1] not in (["bash"], ["sh"], ["shell"], ["console"]):
            continue
        for line in logical_lines(block.body):
            if tokens := shlex.split(line, comments=True):
                commands.append(_normalise(tokens))
    return commands


def readme_script_commands(readme: str) -> list[list[str]]:
    """The commands the README's "The two commands" section shows besides the scripts."""
    return [c for c in shell_commands(section(readme, TWO_COMMANDS)) if not c[0].startswith("./")]


# ---------------------------------------------------------------------------------------------
# The checkers on synthetic pages: they must find what is broken, and only that


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / "img" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## A heading: with `code`, and punctuation!\n\n![ok](img/a.png)\n"
        "[back](../README.md#same-1)\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](docs/page.md#a-heading-with-code-and-punctuation) [ok](#same-1) [ok](docs/)\n"
        '[ok, title](docs/page.md "Page") ![ok](docs/img/a.png) [ok][ref]\n'
        "[external](https://example.com/nowhere.md#x) [mail](mailto:a@b.c)\n"
        "[bad file](docs/missing.md) [bad anchor](docs/page.md#nope) [bad self](#same-2)\n"
        "![bad image](docs/img/none.png) [wrapped\nbad](docs/gone.md)\n"
        '<img src="docs/img/none2.png" width="10"> [outside](../../etc/hosts)\n'
        "`[inline code](nowhere.md)` <!-- [comment](nowhere.md) -->\n\n"
        "```bash\n[in a code block](nowhere.md)\n```\n\n"
        "[ref]: docs/page.md\n[bad ref]: docs/none.md\n",
        encoding="utf-8",
    )
    found = broken_links([tmp_path / "README.md", tmp_path / "docs" / "page.md"], tmp_path)
    targets = sorted(re.search(r"'([^']*)'", message).group(1) for message in found)
    assert targets == sorted(
        [
            "docs/missing.md",
            "docs/page.md#nope",
            "#same-2",
            "docs/img/none.png",
            "docs/gone.md",
            "docs/img/none2.png",
            "../../etc/hosts",
            "docs/none.md",
        ]
    ), found
    assert any(":11: image 'docs/img/none.png': no such file" in message for message in found)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Label real alerts: `stampflow label`", "label-real-alerts-stampflow-label"),
        (
            "The same model in ONNX: `stampflow export-onnx` and `--runtime onnx`",
            "the-same-model-in-onnx-stampflow-export-onnx-and---runtime-onnx",
        ),
        (
            "Issue 15, last round: the CPU side cut to 0.22 ms per alert read",
            "issue-15-last-round-the-cpu-side-cut-to-022-ms-per-alert-read",
        ),
        ("Classify real alerts with ALeRCE's weights", "classify-real-alerts-with-alerces-weights"),
        ("**Mixed** *precision* [see](x.md)", "mixed-precision-see"),
        ("`__init__` and _emphasis_ and snake_case", "__init__-and-emphasis-and-snake_case"),
        ("Streaming (Pub/Sub) ##", "streaming-pubsub"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(heading_text(_HEADING.match(f"## {heading}").group(2))) == slug


def test_duplicate_headings_get_numbered_anchors():
    text = "# A\n## Tests\n```\n## Tests\n```\n## Tests\n### Tests\n## Tests 1\n"
    assert anchors(text) == {"a", "tests", "tests-1", "tests-1-1", "tests-2"}


def test_script_parser_sees_a_changed_flag():
    """Changing a flag of run_local.sh without the README must make the comparison fail."""
    script = (ROOT / "run_local.sh").read_text(encoding="utf-8")
    # the value of the first flag of the first command it runs
    changed = re.sub(r"(\.venv/bin/\S+ \S+ --[\w-]+ )(\S+)", r"\g<1>changed", script, count=1)
    assert changed != script
    assert script_commands(changed) != script_commands(script)
    assert readme_script_commands(README.read_text(encoding="utf-8")) != [
        *script_commands(changed),
        *script_commands((ROOT / "run_tests.sh").read_text(encoding="utf-8")),
    ]


def test_script_parser_on_a_synthetic_script():
    script = (
        '#!/usr/bin/env bash\nset -euo pipefail\nif [ $# -gt 0 ]; then\n  inputs=("$@")\nelse\n'
        "  inputs=(night)\nfi\n.venv/bin/tool a --flag 1 \\\n    --other 'x y'  # comment\n"
        'echo .venv/bin/not-a-command\n.venv/bin/tool b --input "${inputs[@]}" "$@"\n'
    )
    assert script_commands(script) == [
        ["tool", "a", "--flag", "1", "--other", "x y"],
        ["tool", "b", "--input", "night"],
    ]


# ---------------------------------------------------------------------------------------------
# The real README and docs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(path):
    assert links(path) or path != README, "the README links to nothing: the parser is broken"
    assert broken_links([path], ROOT) == []


def test_readme_links_every_docs_page():
    linked = {
        resolve(link, ROOT).resolve() for link in links(README) if not is_external(link.target)
    }
    missing = [p.relative_to(ROOT) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert missing == [], f"docs pages the README does not link: {missing}"


def test_two_commands_section_shows_both_scripts():
    shown = shell_commands(section(README.read_text(encoding="utf-8"), TWO_COMMANDS))
    scripts = [c[0] for c in shown if c[0].startswith("./")]
    assert scripts[:2] == ["./run_local.sh", "./run_tests.sh"], shown


def test_readme_shows_what_the_scripts_run():
    """The plain commands of "The two commands" are run_local.sh's, then run_tests.sh's."""
    local = script_commands((ROOT / "run_local.sh").read_text(encoding="utf-8"))
    tests = script_commands((ROOT / "run_tests.sh").read_text(encoding="utf-8"))
    assert [c[:2] for c in local] == [["stampflow", "simulate"], ["stampflow", "run"]], local
    assert [c[0] for c in tests] == ["ruff", "ruff", "python"], tests
    shown = readme_script_commands(README.read_text(encoding="utf-8"))
    assert shown == [*local, *tests]


def test_readme_describes_the_sample_night_run_local_makes():
    """The prose about the sample night states the script's own numbers."""
    simulate = script_commands((ROOT / "run_local.sh").read_text(encoding="utf-8"))[0]
    flags = {
        token: value
        for token, value in zip(simulate, [*simulate[1:], ""], strict=True)
        if token.startswith("--") and not value.startswith("--")
    }
    n, defects = int(flags["--n"]), float(flags["--defects"])
    per_object = int(flags["--detections-per-object"])
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    sentence = (
        f"`./run_local.sh` simulates a night of {n:,} ZTF alerts (up to "
        f"{words.get(per_object, per_object)} detections per object, {defects:.0%} with defects)"
    )
    assert sentence in " ".join(README.read_text(encoding="utf-8").split())
