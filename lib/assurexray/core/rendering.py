"""One renderer for every generated document: blocks -> markdown and HTML, and the one set of number formats.

A document (report, model card, audit, comparison, datasheet) is built as a list of blocks (:class:`Heading`,
:class:`Para`, :class:`Bullets`, :class:`Table`, :class:`Figure`, :class:`Chart`, :class:`Image`, :class:`Alert`)
from its
metrics; :func:`to_markdown` and :func:`to_html` render the same list, so two renderings of a document never
disagree, and the modules that compute numbers never write markup. Block text uses a small markdown subset
(`code` and **bold**) that :func:`to_html` translates.

Every value passes through the formatters here, so a number reads the same in every document, the README and
the app: :func:`fmt` (3 decimals), :func:`fmt_ci` (an interval: ``0.863 (0.823–0.899)``), :func:`fmt_param`,
:func:`fmt_pct`, :func:`fmt_level`. No timestamps: the same blocks give byte-identical documents.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "Heading", "Para", "Bullets", "Table", "Figure", "Chart", "Image", "Alert", "Block",
    "to_markdown", "to_html", "markdown_table",
    "fmt", "fmt_ci", "fmt_diff", "fmt_param", "fmt_pct", "fmt_level", "unavailable", "RERUN",
]

#: How a reader gets a missing pipeline output back.
RERUN = "run `dvc repro`"


# ------------------------------------------------------------------------------------------------ blocks


@dataclass(frozen=True)
class Heading:
    level: int  # 1 = the document title
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # cells already formatted (strings)


@dataclass(frozen=True)
class Figure:
    """A PNG embedded in HTML (base64, so the page opens offline as one file) and named, not linked, in markdown.

    The PNGs are DVC outputs, absent from a git checkout until ``dvc pull``: a markdown link would break for
    every reader of the repository, so markdown names the file and says where it is (``note``).
    """

    caption: str
    path: Path | None  # None = the file is absent: both renderings say so and how to get it
    name: str  # display name of the file (no machine paths)
    note: str = ""  # where a markdown reader finds the figure


@dataclass(frozen=True)
class Chart:
    """A figure the document draws itself (PNG bytes): embedded in HTML; markdown names the files it is drawn from."""

    caption: str
    png: bytes | None  # None = a source file is absent: both renderings say so and how to get it
    sources: tuple[str, ...]  # display names of the files drawn
    note: str = ""  # appended to the markdown sentence (where a reader finds the sources or the chart)


@dataclass(frozen=True)
class Image:
    """An image linked, not embedded (``![alt](src)``): for documents written next to their figures."""

    alt: str
    src: str  # path relative to the document


@dataclass(frozen=True)
class Alert:
    """A warning shown in bold and, in HTML, in a red box (the NOT FOR CLINICAL USE disclaimer)."""

    text: str


Block = Heading | Para | Bullets | Table | Figure | Chart | Image | Alert


# -------------------------------------------------------------------------------------------- renderers


def to_markdown(blocks: Sequence[Block]) -> str:
    """Markdown, one blank line between blocks, ending with a newline."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            out.append(markdown_table(b.header, b.rows))
        elif isinstance(b, Figure):
            if b.path is None:
                out.append(unavailable(b.caption, b.name))
            else:
                out.append(f"*Figure: {b.caption}*: `{b.name}`" + (f" ({b.note})" if b.note else "") + ".")
        elif isinstance(b, Chart):
            if b.png is None:
                out.append(unavailable(b.caption, " or ".join(b.sources)))
            else:
                drawn = " and ".join(f"`{s}`" for s in b.sources)
                out.append(f"*Figure: {b.caption}*: drawn from {drawn}" + (f" {b.note}" if b.note else "") + ".")
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.src})")
        elif isinstance(b, Alert):
            out.append(f"> **{b.text}**")
        else:
            raise TypeError(f"unknown document block {b!r}; use one of the blocks in assurexray.core.rendering.")
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], *, title: str) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 data URIs, no external resource."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            if b.path is None:
                body.append(f"<p class=\"missing\">{_inline(unavailable(b.caption, b.name))}</p>")
            else:
                body.append(_embedded(b.path.read_bytes(), b.caption))
        elif isinstance(b, Chart):
            if b.png is None:
                body.append(f"<p class=\"missing\">{_inline(unavailable(b.caption, ' or '.join(b.sources)))}</p>")
            else:
                body.append(_embedded(b.png, b.caption))
        elif isinstance(b, Image):
            body.append(f"<figure><img src=\"{html.escape(b.src)}\" alt=\"{html.escape(b.alt)}\"></figure>")
        elif isinstance(b, Alert):
            body.append(f"<div class=\"disclaimer\" role=\"alert\"><strong>{_inline(b.text)}</strong></div>")
        else:
            raise TypeError(f"unknown document block {b!r}; use one of the blocks in assurexray.core.rendering.")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (no trailing newline); ``|`` in a cell is escaped so it cannot split the cell."""
    lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- formatters


def fmt(x: Any) -> str:
    """A metric value: floats with 3 decimals, ints as is, booleans as yes/no, None as ``n/a``."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        text = f"{x:.3f}"
        return text[1:] if text == "-0.000" else text  # a rounding artefact, not a negative value
    return str(x)


def fmt_ci(ci: Mapping[str, Any] | None) -> str:
    """A CI value (``{"value", "ci_low", "ci_high"}``) as ``0.912 (0.871–0.948)``; ``undefined`` without a value.

    The bounds are separated by an en dash, not a hyphen, because intervals of differences have negative
    bounds: ``-0.065 (-0.325–0.194)`` reads unambiguously where ``(-0.325-0.194)`` would not.
    """
    if ci is None or ci.get("value") is None:
        return "undefined"
    if ci.get("ci_low") is None or ci.get("ci_high") is None:
        return f"{fmt(ci['value'])} (no interval)"
    # A proportion over few images carries a Wilson interval (metrics.proportion_ci): say so, with its n.
    few = f", Wilson, n={ci['n']}" if ci.get("interval") == "wilson" else ""
    return f"{fmt(ci['value'])} ({fmt(ci['ci_low'])}–{fmt(ci['ci_high'])}{few})"


def fmt_diff(ci: Mapping[str, Any] | None) -> str:
    """A paired difference with its interval, the bounds joined by "to": ``-0.237 (-0.337 to -0.138)``.

    Differences are often negative at both ends, and ``(-0.337–-0.138)`` puts a dash between two minus signs;
    "to" cannot be misread. ``undefined`` without a value, ``(no interval)`` without bounds, as :func:`fmt_ci`.
    """
    if ci is None or ci.get("value") is None:
        return "undefined"
    if ci.get("ci_low") is None or ci.get("ci_high") is None:
        return f"{fmt(ci['value'])} (no interval)"
    return f"{fmt(ci['value'])} ({fmt(ci['ci_low'])} to {fmt(ci['ci_high'])})"


def fmt_param(x: Any) -> str:
    """A params.yaml value as written (0.001 not 1e-03), lists comma-separated, null as ``null (default)``."""
    if x is None:
        return "null (default)"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return format(Decimal(repr(x)), "f")
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_param(v) for v in x)
    return str(x)


def fmt_pct(x: Any) -> str:
    """A percentage already in percent (audit metrics), one decimal."""
    return "n/a" if x is None else f"{float(x):.1f}%"


def fmt_level(x: Any) -> str:
    """A confidence level given as a fraction (0.95) shown as a percentage (95%)."""
    return "n/a" if x is None else f"{float(x) * 100:g}%"


def unavailable(what: str, missing: str) -> str:
    """The one sentence for a part of a document whose input file is absent, with the fix."""
    return f"{what}: not available ({missing} missing): {RERUN}."


# ---------------------------------------------------------------------------------------------- helpers


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;line-height:1.5;color:#1d1d1f;margin:0;"
    "background:#fafafa}main{max-width:980px;margin:auto;padding:1.5em;background:#fff}"
    "h1,h2,h3{line-height:1.25}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left}th{background:#f0f0f0}code{background:#f3f3f3;padding:0 .2em}"
    "figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#555}"
    ".disclaimer{border:3px solid #b00020;background:#fdecea;color:#b00020;padding:.8em 1em;margin:1em 0;"
    "font-size:1.1em}.missing{color:#8a5a00;font-style:italic}"
)


def _embedded(png: bytes, caption: str) -> str:
    payload = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{payload}\" alt=\"{html.escape(caption)}\">"
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def _inline(text: str) -> str:
    """HTML for the small markdown subset the blocks use: `code` and **bold**, everything else escaped."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
