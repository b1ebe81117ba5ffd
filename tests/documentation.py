"""The project's pages as tests read them: README.md and docs/*.md, a section by its heading, its commands.

Tests run the command lines the pages print (read here, never copied into a test), so a page and what runs
cannot drift apart; a command moved from one page to another only changes the page a test names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = "README.md"
DOCS = "docs"


def pages() -> list[str]:
    """README.md then every docs/*.md, as paths relative to the repository root."""
    return [README] + sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / DOCS).glob("*.md"))


def page_text(page: str) -> str:
    return (REPO_ROOT / page).read_text(encoding="utf-8")


def section(page: str, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading of any level) in ``page``, up to the next heading of that
    level or above. Lines in fenced blocks are never headings: a shell comment starts with "# " too."""
    found, level, fenced, kept = False, 0, False, []
    for line in page_text(page).splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#+) (.+?)\s*$", line)
        if not found:
            if match and match.group(2) == heading:
                found, level = True, len(match.group(1))
            continue
        if match and len(match.group(1)) <= level:
            break
        kept.append(line)
    if not found:
        raise AssertionError(f"{page}: no heading {heading!r}; a test reads its commands from there")
    return "".join(kept)


def bash_lines(text: str) -> list[str]:
    """Command lines of the ```bash blocks in ``text``: continuations joined, comments and blank lines dropped.

    A line ``name=value`` sets a shell variable, and later ``$name`` / ``${name}`` read it, as the shell would
    (the line itself is kept); other ``$...`` (a loop variable) stay as printed.
    """
    lines, variables = [], {}
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            for name, value in variables.items():
                line = re.sub(rf"\$(\{{{name}\}}|{name}\b)", lambda _: value, line)
            assignment = re.fullmatch(r"([A-Za-z_]\w*)=(\S+)", line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
            lines.append(line)
    return lines


def commands(text: str, prefix: tuple[str, ...], *, inline: bool = False) -> list[list[str]]:
    """Every command of the ```bash blocks in ``text`` (with ``inline``, of its `code` spans too) whose argv
    starts with ``prefix``, as argv.

    Lines are split at ``&&`` and ``;``, and a leading ``do`` or ``VAR=value`` is dropped, so a command inside a
    loop, after another (``dvc exp apply x && dvc exp run ...``) or with an environment setting counts too; a
    console script called by its path (``.venv/bin/assurexray``) counts as its name.
    """
    found = []
    for line in bash_lines(text) + (inline_code(text) if inline else []):
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            if prefix[0] not in part:  # prose spans need not be shell words (an apostrophe, a lone quote)
                continue
            argv = shlex.split(part)
            while argv and (argv[0] == "do" or re.fullmatch(r"[A-Za-z_]\w*=\S*", argv[0])):
                argv = argv[1:]
            if argv and argv[0].endswith("/" + prefix[0]):  # .venv/bin/assurexray: the same console script
                argv = [prefix[0], *argv[1:]]
            if tuple(argv[: len(prefix)]) == prefix:
                found.append(argv)
    return found


def inline_code(text: str) -> list[str]:
    """The inline `code` spans of ``text`` outside fenced blocks (commands quoted in prose), each on one line."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(text))]


def prose(text: str) -> str:
    """``text`` without its fenced blocks (where a link or a heading is only an example)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
