"""The README's real-data table is generated from metrics files: every number in it is in them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from assurexray.assessment.results_table import BEGIN, END, main, results_table, update_readme


def _ci(v: float, lo: float, hi: float) -> dict:
    return {"value": v, "ci_low": lo, "ci_high": hi}


def _write(root: Path) -> None:
    grouping = {"basis": "cases+duplicates", "n_images": 100, "n_images_with_case": 60, "n_cases": 30,
                "n_cases_multi_image": 20, "n_duplicate_images": 2, "n_groups": 70, "n_groups_multi_image": 20,
                "n_images_in_multi_image_groups": 50, "largest_groups": [5, 4, 3], "groups_straddling": 0,
                "cases_straddling": 0, "test_images_with_case_elsewhere": 0}
    for variant, auc in (("stratified", 0.912), ("center", 0.701)):
        (root / variant / "eval").mkdir(parents=True)
        by_center = {} if variant == "stratified" else {
            "2": {"n": 30, "counts": {"Normal": 10, "Benign": 15, "Malignant": 5},
                  "headline": {"macro_auc": _ci(0.744, 0.661, 0.812)},
                  "diagnostics": {"tumour_vs_normal_auc": _ci(0.733, 0.6, 0.85)},
                  "operating_point": {"test_sensitivity": _ci(0.8, 0.376, 0.964), "test_specificity": _ci(0.52, 0.4, 0.6)}},
            "3": {"n": 20, "counts": {"Normal": 2, "Benign": 15, "Malignant": 3},
                  "headline": {"macro_auc": _ci(0.612, 0.5, 0.7)}, "diagnostics": {},
                  "operating_point": {"test_sensitivity": _ci(0.667, 0.2, 0.94), "test_specificity": _ci(0.47, 0.3, 0.6)}}}
        metrics = {"n_test": 50, "class_names": ["Normal", "Benign", "Malignant"], "bootstrap": {"ci_level": 0.9},
                   "test_counts": {"Normal": 12, "Benign": 30, "Malignant": 8},
                   "headline": {"macro_auc": _ci(auc, auc - 0.05, auc + 0.04)},
                   "diagnostics": {"tumour_vs_normal_auc": _ci(0.777, 0.7, 0.85)},
                   "operating_point": {"test_sensitivity": _ci(0.875, 0.5, 0.98), "test_specificity": _ci(0.31, 0.2, 0.4),
                                       "reliable": variant == "stratified", "val_positives": 25 if variant == "stratified" else 7},
                   "by_center": by_center}
        (root / variant / "eval" / "metrics.json").write_text(json.dumps(metrics))
        (root / variant / "split.json").write_text(json.dumps({"strategy": variant, "grouping": grouping}))


def _loc(pointing: float, dice: float, n: int) -> dict:
    return {"pointing_game": _ci(pointing, pointing - 0.125, pointing + 0.0625),
            "dice@val": _ci(dice, dice - 0.0417, dice + 0.0312), "n": n}


def _explain(centers: tuple[str, ...], *, lesion: bool) -> dict:
    """explain/metrics.json (explain.explain_variant's shape, the parts the table reads); ``lesion`` False = a
    file written before lesion maps were scored (no ``lesion_map`` key at all)."""
    def block(pointing: float, dice: float) -> dict:
        return {"overall": _loc(pointing, dice, 40),
                "per_center": {c: _loc(round(pointing + (i + 1) / 16, 4), round(dice + (i + 1) / 32, 4), 20)
                               for i, c in enumerate(centers)}}

    x = {"target_layer": "blocks.5", "model": block(0.4375, 0.1875), "baseline": block(0.1562, 0.0938)}
    if lesion:
        x |= {"lesion_map": block(0.8125, 0.5312),
              "intervals": "case-clustered bootstrap (whole case groups resampled)",
              "comparisons": {"lesion_map_vs_gradcam": {"overall": {"pointing_game": _ci(0.375, 0.25, 0.4688)}}}}
    return x


def _write_explain(root: Path, variant: str, data: dict) -> None:
    (root / variant / "explain").mkdir(parents=True, exist_ok=True)
    (root / variant / "explain" / "metrics.json").write_text(json.dumps(data))


def _numbers(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for v in node.values():
            _numbers(v, out)
    elif isinstance(node, list):
        for v in node:
            _numbers(v, out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out.add(f"{node:.3f}" if isinstance(node, float) else str(node))
    return out


def test_every_number_in_the_table_comes_from_the_metrics_files(tmp_path):
    _write(tmp_path)
    table = results_table(tmp_path, command="dvc exp run -n btxrd-dev ...", date="2026-12-01")
    known: set[str] = set()
    for path in tmp_path.rglob("*.json"):
        _numbers(json.loads(path.read_text()), known)
    rows = table.split("\n\n")[0].splitlines()[2:]  # the rows, without the header
    body = " ".join(cell for row in rows for cell in row.split("|")[3:])  # the numbers, not the labels
    for number in re.findall(r"\d+\.\d{3}|\b\d+\b", body):
        assert number in known, number
    assert "| Centre holdout (train centre 1) | centre 3 | 20 (2/15/3) | 0.612 (0.500–0.700) | undefined |" in table
    assert "| Macro AUC (90% CI) |" in table  # the level the metrics were bootstrapped at, not a typed 95%
    assert "7 validation Malignant images and is flagged unreliable" in table
    assert "No group straddles" in table and "2026-12-01" in table


def test_the_lesion_map_columns_read_each_test_sets_figures_from_the_explain_metrics(tmp_path):
    _write(tmp_path)
    _write_explain(tmp_path, "stratified", _explain(("1", "2"), lesion=True))
    _write_explain(tmp_path, "center", _explain(("2", "3"), lesion=True))
    table = results_table(tmp_path, command="x", date="2026-12-01")
    known: set[str] = set()
    for path in tmp_path.rglob("*.json"):
        _numbers(json.loads(path.read_text()), known)
    for number in re.findall(r"-?\d+\.\d{3}", table):
        assert number in known, number  # the notes too, not only the rows
    assert "| Pointing game: lesion map vs centred Gaussian | Dice (val threshold): lesion map vs centred Gaussian |" \
        in table
    assert ("| Stratified (grouped) | all test | 50 (12/30/8) | 0.912 (0.862–0.952) | 0.777 (0.700–0.850) | "
            "0.875 (0.500–0.980) / 0.310 (0.200–0.400) | 0.812 (0.688–0.875) vs 0.156 (0.031–0.219) | "
            "0.531 (0.489–0.562) vs 0.094 (0.052–0.125) |") in table
    # each centre's row reads that centre's figures (per_center), not the pooled ones
    assert "| centre 2 | 30 (10/15/5) | 0.744 (0.661–0.812) | 0.733 (0.600–0.850) | " \
           "0.800 (0.376–0.964) / 0.520 (0.400–0.600) | 0.875 (0.750–0.938) vs 0.219 (0.094–0.281) | " \
           "0.562 (0.521–0.594) vs 0.125 (0.083–0.156) |" in table
    assert "| centre 3 | 20 (2/15/3) | 0.612 (0.500–0.700) | undefined | " \
           "0.667 (0.200–0.940) / 0.470 (0.300–0.600) | " \
           "0.938 (0.812–1.000) vs 0.281 (0.156–0.344) | 0.594 (0.552–0.625) vs 0.156 (0.115–0.188) |" in table
    assert "lesion map minus Grad-CAM, paired on the same images: 0.375 (0.250 to 0.469)" in table
    assert "intervals: case-clustered bootstrap (whole case groups resampled)" in table and "research only" in table


def test_metrics_without_a_lesion_map_render_n_a_in_the_lesion_columns(tmp_path):
    _write(tmp_path)  # stratified: no explain metrics at all
    _write_explain(tmp_path, "center", _explain(("2", "3"), lesion=False))  # written before lesion maps
    table = results_table(tmp_path, command="x", date="2026-12-01")
    rows = table.split("\n\n")[0].splitlines()[2:]
    assert len(rows) == 4 and all(row.endswith("| n/a | n/a |") for row in rows)
    assert "Grad-CAM pointing game on 40 annotated test tumours 0.438 (0.312–0.500)" in table  # old text kept
    assert "lesion map minus Grad-CAM" not in table and "- Lesion map:" not in table
    _write_explain(tmp_path, "center", _explain(("2", "3"), lesion=False) | {"lesion_map": None})  # no lesion head
    assert results_table(tmp_path, command="x", date="2026-12-01") == table


def test_the_readme_block_is_replaced_between_the_markers_only(tmp_path):
    _write(tmp_path / "metrics")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    assert main(["--metrics", str(tmp_path / "metrics"), "--command", "x", "--date", "2026-12-01",
                 "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("after\n") and "old table" not in text
    assert "0.701 (0.651–0.741)" in text
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError, match=r"no <!-- results:begin --> \.\.\. <!-- results:end --> block"):
        update_readme(tmp_path / "bare.md", "table")


@pytest.mark.parametrize("key", ["class_names", "bootstrap"])
def test_eval_metrics_without_class_order_or_level_are_named_with_the_fix(tmp_path, key):
    _write(tmp_path)
    path = tmp_path / "center" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics[key]
    path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"center/eval/metrics\.json: 'class_names' or 'bootstrap\.ci_level' missing.*"
                                         r"dvc repro evaluate@center"):
        results_table(tmp_path, command="x", date="2026-12-01")


def test_variants_bootstrapped_at_different_levels_are_refused(tmp_path):
    _write(tmp_path)
    path = tmp_path / "center" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["bootstrap"]["ci_level"] = 0.95
    path.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"class_names / bootstrap\.ci_level differ"):
        results_table(tmp_path, command="x", date="2026-12-01")
