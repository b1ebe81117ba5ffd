"""Tests for assurexray.core.rendering: every block kind in markdown and HTML, escaping, and the one interval format."""

from __future__ import annotations

import base64

import pytest

from assurexray.core.rendering import (
    Alert,
    Bullets,
    Chart,
    Figure,
    Heading,
    Image,
    Para,
    Table,
    fmt,
    fmt_ci,
    fmt_diff,
    fmt_level,
    fmt_param,
    fmt_pct,
    markdown_table,
    to_html,
    to_markdown,
    unavailable,
)


def test_each_block_kind_renders_to_markdown_separated_by_one_blank_line():
    blocks = [Heading(2, "Results"), Alert("NOT FOR CLINICAL USE"), Para("Macro AUC `0.9`."),
              Bullets(("one", "two")), Table(("a", "b"), (("1", "2"),)), Image("views", "audit/views.png")]
    assert to_markdown(blocks) == (
        "## Results\n\n> **NOT FOR CLINICAL USE**\n\nMacro AUC `0.9`.\n\n- one\n- two\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n![views](audit/views.png)\n"
    )


def test_the_same_blocks_render_to_html_with_code_bold_and_escaping():
    page = to_html([Heading(1, "A <b> title"), Para("use `x<1` and **bold**"), Bullets(("i",)),
                    Table(("h",), (("c & d",),)), Alert("warn"), Image("alt \"q\"", "a/b.png")], title="T & U")
    assert "<title>T &amp; U</title>" in page
    assert "<h1>A &lt;b&gt; title</h1>" in page
    assert "<p>use <code>x&lt;1</code> and <strong>bold</strong></p>" in page
    assert "<ul><li>i</li></ul>" in page
    assert "<table><thead><tr><th>h</th></tr></thead><tbody><tr><td>c &amp; d</td></tr></tbody></table>" in page
    assert "<div class=\"disclaimer\" role=\"alert\"><strong>warn</strong></div>" in page
    assert "<img src=\"a/b.png\" alt=\"alt &quot;q&quot;\">" in page
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # loads nothing from the network


def test_a_pipe_inside_a_cell_is_escaped_so_it_cannot_split_the_cell():
    assert markdown_table(("value",), (("a | b",), ("two\nlines",))) == (
        "| value |\n|---|\n| a \\| b |\n| two lines |")


def test_a_figure_is_embedded_in_html_and_named_with_its_note_in_markdown(tmp_path):
    png = tmp_path / "roc.png"
    png.write_bytes(b"\x89PNG fake")
    figure = Figure("ROC curves", png, "plots/stratified/eval/roc.png", "tracked by DVC")
    assert to_markdown([figure]) == "*Figure: ROC curves*: `plots/stratified/eval/roc.png` (tracked by DVC).\n"
    payload = base64.b64encode(b"\x89PNG fake").decode("ascii")
    assert f"<img src=\"data:image/png;base64,{payload}\" alt=\"ROC curves\">" in to_html([figure], title="t")


def test_a_missing_figure_says_which_file_and_how_to_get_it_in_both_renderings():
    figure = Figure("ROC curves", None, "plots/center/eval/roc.png")
    sentence = unavailable("ROC curves", "plots/center/eval/roc.png")
    assert sentence == "ROC curves: not available (plots/center/eval/roc.png missing): run `dvc repro`."
    assert to_markdown([figure]) == sentence + "\n"
    assert "<p class=\"missing\">ROC curves: not available (plots/center/eval/roc.png missing): run " \
           "<code>dvc repro</code>.</p>" in to_html([figure], title="t")


def test_a_chart_is_embedded_from_its_bytes_and_names_its_sources_or_says_which_is_missing():
    chart = Chart("Loss", b"png-bytes", ("a/train.tsv", "a/val.tsv"), "(in git)")
    assert to_markdown([chart]) == "*Figure: Loss*: drawn from `a/train.tsv` and `a/val.tsv` (in git).\n"
    assert base64.b64encode(b"png-bytes").decode("ascii") in to_html([chart], title="t")
    missing = Chart("Loss", None, ("a/train.tsv", "a/val.tsv"))
    assert to_markdown([missing]) == unavailable("Loss", "a/train.tsv or a/val.tsv") + "\n"


@pytest.mark.parametrize("render", [to_markdown, lambda blocks: to_html(blocks, title="t")])
def test_an_unknown_block_is_refused_by_name(render):
    with pytest.raises(TypeError, match=r"unknown document block 'raw text'; use one of the blocks"):
        render(["raw text"])


@pytest.mark.parametrize(("ci", "expected"), [
    ({"value": 0.8634, "ci_low": 0.8231, "ci_high": 0.8992}, "0.863 (0.823–0.899)"),
    # a gap: negative bounds stay readable because the separator is an en dash, not a hyphen
    ({"value": -0.0651, "ci_low": -0.3254, "ci_high": 0.1942}, "-0.065 (-0.325–0.194)"),
    ({"value": 0.4706, "ci_low": 0.2617, "ci_high": 0.6904, "interval": "wilson", "n": 17},
     "0.471 (0.262–0.690, Wilson, n=17)"),
    ({"value": 0.5, "ci_low": None, "ci_high": None}, "0.500 (no interval)"),
    ({"value": None, "ci_low": None, "ci_high": None}, "undefined"),
    (None, "undefined"),
])
def test_every_interval_is_written_one_way(ci, expected):
    assert fmt_ci(ci) == expected


@pytest.mark.parametrize(("ci", "expected"), [
    ({"value": -0.2374, "ci_low": -0.3371, "ci_high": -0.1382}, "-0.237 (-0.337 to -0.138)"),
    ({"value": 0.0413, "ci_low": -0.0252, "ci_high": 0.1108}, "0.041 (-0.025 to 0.111)"),
    ({"value": 0.25, "ci_low": None, "ci_high": None}, "0.250 (no interval)"),
    (None, "undefined"),
])
def test_a_paired_difference_joins_its_bounds_with_to_never_a_dash_between_minus_signs(ci, expected):
    assert fmt_diff(ci) == expected
    assert "–-" not in fmt_diff(ci) and "--" not in fmt_diff(ci)


@pytest.mark.parametrize(("formatter", "value", "expected"), [
    (fmt, 0.91249, "0.912"), (fmt, -1e-17, "0.000"), (fmt, -0.0125, "-0.013"), (fmt, 7, "7"), (fmt, None, "n/a"),
    (fmt, True, "yes"), (fmt, "gradcam", "gradcam"),
    (fmt_param, 2.5e-05, "0.000025"), (fmt_param, 0.001, "0.001"), (fmt_param, [0.3, 0.5], "0.3, 0.5"),
    (fmt_param, None, "null (default)"), (fmt_param, False, "false"), (fmt_param, 12, "12"),
    (fmt_pct, 41.5, "41.5%"), (fmt_pct, None, "n/a"), (fmt_level, 0.95, "95%"), (fmt_level, 0.9, "90%"),
])
def test_formatters_render_values_consistently(formatter, value, expected):
    assert formatter(value) == expected
