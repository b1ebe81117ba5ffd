"""`dvc plots` definitions: each chart once, class order and colours as in the PNGs, an offline page template."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import matplotlib
import pytest
import yaml
from matplotlib.colors import to_hex

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / ".dvc" / "plots"
CLASSES = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["base"]["class_names"]


def _template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def _top_level_plots() -> dict[str, dict]:
    plots = {}
    for entry in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]:
        name, props = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        plots[name] = props or {}
    return plots


def _files_of(name: str, props: dict) -> list[str]:
    y = props.get("y")
    return list(y) if isinstance(y, dict) else [name]


def test_no_data_file_is_drawn_twice():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    stage_plots = [p for s in stages.values() for p in s.get("do", s).get("plots", [])]
    assert stage_plots == []  # a stage-level plot plus the top-level chart of the same file drew it twice
    files = [f for name, props in _top_level_plots().items() for f in _files_of(name, props)]
    assert len(files) == len(set(files)), files
    assert not [f for f in files if re.search(r"plots/(stratified|center)/eval/(roc|pr|confusion)\.png$", f)]
    eval_folders = [f for f in files if re.fullmatch(r"plots/\w+/eval/?", f)]
    assert eval_folders == []  # the folder's ROC/PR/confusion PNGs would repeat the Vega charts


def test_every_template_named_in_dvc_yaml_exists():
    for name, props in _top_level_plots().items():
        if "template" in props:
            assert (TEMPLATES / f"{props['template']}.json").is_file(), (name, props["template"])


def _curve_encoding(template: dict) -> dict:
    """The encoding of the curves themselves (the ROC template layers a chance diagonal and AUC labels on them)."""
    spec = template["spec"]
    return next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")["encoding"] if "layer" in spec \
        else spec["encoding"]


@pytest.mark.parametrize("name", ["roc", "by_class_step"])
def test_curves_use_the_png_class_colours_in_class_order(name):
    colour = _curve_encoding(_template(name))["color"]
    # evaluation's ROC/PR PNGs draw the classes in order with matplotlib's default colour cycle
    cycle = [to_hex(c) for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][: len(CLASSES)]]
    assert colour["field"] == "class"
    assert colour["scale"] == {"domain": CLASSES, "range": cycle}


def test_precision_recall_is_drawn_as_steps_and_roc_as_lines_in_data_order():
    pr, roc = _template("by_class_step"), _template("roc")
    assert pr["spec"]["mark"]["interpolate"] == "step-after"  # matplotlib drawstyle="steps-post" in data order
    roc_line = next(layer for layer in roc["spec"]["layer"] if layer["mark"]["type"] == "line")
    assert "interpolate" not in roc_line["mark"]
    for template in (pr, roc):
        assert _curve_encoding(template)["order"] == {"field": "point", "type": "quantitative"}
    plots = _top_level_plots()
    assert {p["template"] for n, p in plots.items() if n.startswith("Precision-recall")} == {"by_class_step"}


def test_confusion_has_actual_rows_and_predicted_columns_in_class_order_with_counts():
    template = _template("confusion_counts")
    encoding = template["spec"]["encoding"]
    assert (encoding["x"]["title"], encoding["y"]["title"]) == ("Predicted", "Actual")  # as the PNG
    assert encoding["x"]["sort"] == encoding["y"]["sort"] == CLASSES
    text = [layer for layer in template["spec"]["layer"] if layer["mark"]["type"] == "text"]
    assert text and text[0]["encoding"]["text"]["field"] == "count"
    confusion = [p for n, p in _top_level_plots().items() if n.startswith("Confusion")]
    assert len(confusion) == 1 and confusion[0]["x"] == "predicted"
    assert set(confusion[0]["y"].values()) == {"actual"}


def test_training_loss_tells_train_from_validation_in_its_legend():
    template = _template("loss")
    calc = [t for t in template["transform"] if t.get("as") == "partition"]
    assert calc and "'/val/'" in calc[0]["calculate"]
    colour = template["spec"]["encoding"]["color"]
    assert colour["field"] == "partition" and colour["title"] == "loss on"
    assert colour["scale"]["domain"] == ["train", "validation"]
    assert len(set(colour["scale"]["range"])) == 2
    loss = [p for n, p in _top_level_plots().items() if n.startswith("Training loss")]
    assert len(loss) == 1 and loss[0]["template"] == "loss"
    assert sorted(loss[0]["y"]) == sorted(f"metrics/{v}/train/plots/metrics/{part}/loss.tsv"
                                          for v in ("stratified", "center") for part in ("train", "val"))


def test_the_page_template_inlines_vega_and_loads_nothing_from_the_network():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    page_path = REPO_ROOT / ".dvc" / config["plots"]["html_template"]  # DVC resolves it against .dvc/
    assert page_path == TEMPLATES / "offline.html"
    page = page_path.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1
    assert "{scripts}" not in page  # without it DVC never adds its CDN <script src=...> tags
    assert not re.search(r"<script[^>]*\ssrc=", page) and "cdn.jsdelivr" not in page
    for banner in ("/* vega@5.", "/* vega-lite@5.", "/* vega-embed@6."):
        assert page.count(banner) == 1, banner
    assert page.index("/* vega@") < page.index("/* vega-lite@") < page.index("/* vega-embed@")  # load order
    assert page.count("Redistribution and use in source and binary forms") == 3  # the BSD-3 licences
    assert "NOT FOR CLINICAL USE" in page


def test_plot_pages_are_git_ignored():
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "dvc_plots/" in ignored and "plots_diff/" in ignored


@pytest.mark.parametrize("name", ["loss", "roc", "by_class_step", "confusion_counts"])
def test_variant_panels_sit_side_by_side_headed_by_the_project_s_variant_titles(name):
    from assurexray.core.project import VARIANT_TITLES

    template = _template(name)
    titles = [t["calculate"] for t in template["transform"] if t.get("as") == "variant_title"]
    assert len(titles) == 1
    for key, title in VARIANT_TITLES.items():  # the mapping typed in the template agrees with the project's
        assert f"datum.variant == '{key}' ? '{title}'" in titles[0]
    column = template["facet"]["column"]  # columns, not rows: one chart no taller than its neighbours
    assert column["field"] == "variant_title" and column["sort"] == list(VARIANT_TITLES.values())
    assert column["header"]["labelFontSize"] >= 12
    assert "row" not in template["facet"] or template["facet"]["row"]["field"] == "rev"


def test_the_loss_chart_counts_epochs_from_one_as_the_report_does():
    template = _template("loss")
    epoch = [t for t in template["transform"] if t.get("as") == "epoch"]
    assert epoch == [{"calculate": "toNumber(datum['<DVC_METRIC_X>']) + 1", "as": "epoch"}]  # DVCLive step 0 = epoch 1
    x = template["spec"]["encoding"]["x"]
    assert x["field"] == "epoch" and "from 0" not in x["title"]


def test_roc_draws_the_chance_diagonal_and_labels_each_curve_with_its_auc():
    spec = _template("roc")["spec"]
    marks = {layer["mark"]["type"]: layer for layer in spec["layer"]}
    diagonal = marks["rule"]["encoding"]
    assert [diagonal[channel]["datum"] for channel in ("x", "y", "x2", "y2")] == [0, 0, 1, 1]  # (0, 0) to (1, 1)
    label = marks["text"]
    assert label["encoding"]["text"] == {"field": "legend"}
    assert any("' AUC '" in t.get("calculate", "") for t in label["transform"])
    trapezoid = [t["calculate"] for t in _template("roc")["transform"] if t.get("as") == "trapezoid"]
    assert trapezoid and "/ 2" in trapezoid[0]  # the trapezoidal rule, as sklearn.metrics.auc


def test_the_page_template_is_the_one_bin_vendor_vega_writes():
    vendor = (REPO_ROOT / "bin" / "vendor-vega").read_text(encoding="utf-8")
    style = re.search(r"<style>.*?</style>", vendor, re.S).group(0)
    page = (TEMPLATES / "offline.html").read_text(encoding="utf-8")
    assert style in page  # an edit to one without the other would be lost at the next rebuild
    assert "vertical-align: top" in style  # charts of unequal height side by side share their top
