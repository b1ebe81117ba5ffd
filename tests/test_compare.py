"""Tests for assurexray.assessment.compare and stages/compare.py on hand-made metrics files."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from assurexray import DISCLAIMER
from assurexray.assessment.compare import compare_variants, gap_ci, load_variant, render_report
from assurexray.assessment.metrics import HEADLINE_METRICS
from assurexray.core.rendering import fmt_ci

Z95 = 1.959963984540054  # standard normal quantile 0.975


def _ci(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def _eval_metrics(shift: float, *, se: dict | None = None, ci_level: float = 0.95) -> dict:
    """A metrics.json whose headline values are 0.9 - shift with intervals +/- 0.05 (0.1 wide)."""
    headline = {m: _ci(0.9 - shift, 0.85 - shift, 0.95 - shift) for m in HEADLINE_METRICS}
    boot = {"resamples": 100, "ci_level": ci_level, "cluster": False, "seconds": 0.1}
    if se is not None:
        boot["standard_error"] = se
    return {"n_test": 50 if shift else 80, "n_val": 20, "class_names": ["Normal", "Benign", "Malignant"],
            "headline": headline, "bootstrap": boot,
            "operating_point": {"class": "Malignant", "threshold": 0.25 + shift, "target_sensitivity": 0.9,
                                "val_sensitivity": 0.92,
                                "test_sensitivity": _ci(0.88 - shift, 0.8 - shift, 0.96 - shift),
                                "test_specificity": _ci(0.7, 0.6, 0.8)}}


def _explain(value: float) -> dict:
    loc = {"pointing_game": _ci(value, value - 0.1, value + 0.1), "iou@0.5": _ci(value / 2, value / 2 - 0.1,
                                                                                    value / 2 + 0.1), "n": 12}
    return {"method": "gradcam", "model": {"overall": loc, "per_class": {}}}


def test_gap_is_stratified_minus_center_with_the_stored_standard_errors():
    s = _eval_metrics(0.0, se={"macro_auc": 0.03})
    c = _eval_metrics(0.2, se={"macro_auc": 0.04})
    gap = compare_variants(s, c)["headline"]["macro_auc"]["gap"]
    half = Z95 * 0.05  # sqrt(0.03^2 + 0.04^2) = 0.05
    assert gap == {"value": pytest.approx(0.2), "ci_low": pytest.approx(0.2 - half),
                   "ci_high": pytest.approx(0.2 + half)}


def test_without_stored_errors_the_gap_interval_comes_from_the_interval_widths():
    # Each width 0.1 = 2 z se, so the gap half-width z * sqrt(se_s^2 + se_c^2) = sqrt(0.05^2 + 0.05^2).
    a, b = _ci(0.9, 0.85, 0.95), _ci(0.6, 0.55, 0.65)
    gap = gap_ci(a, b, ci_level=0.95)
    assert gap["value"] == pytest.approx(0.3)
    assert gap["ci_high"] - gap["value"] == pytest.approx(math.sqrt(2) * 0.05)


def test_an_undefined_value_gives_an_undefined_gap():
    assert gap_ci(_ci(None, None, None), _ci(0.5, 0.4, 0.6), ci_level=0.95) == _ci(None, None, None)


def test_comparison_has_every_headline_metric_and_localisation_when_present():
    out = compare_variants(_eval_metrics(0.0), _eval_metrics(0.1), stratified_explain=_explain(0.8),
                           center_explain=_explain(0.6))
    assert list(out["headline"]) == list(HEADLINE_METRICS)
    for entry in out["headline"].values():
        assert set(entry) == {"stratified", "center", "gap"}
        assert entry["gap"]["ci_low"] < entry["gap"]["value"] < entry["gap"]["ci_high"]
    assert set(out["localization"]) == {"pointing_game", "iou@0.5"}  # "n" is a count, not a CI
    assert out["localization"]["pointing_game"]["center"]["value"] == 0.6
    assert out["n_test"] == {"stratified": 80, "center": 50}


def test_localisation_is_left_out_when_one_variant_lacks_explain():
    out = compare_variants(_eval_metrics(0.0), _eval_metrics(0.1), stratified_explain=_explain(0.8))
    assert out["localization"] == {}
    assert "Not available" in render_report(out)


def _json_numbers(node, numbers: set[str], strings: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            strings.append(str(key))
            _json_numbers(value, numbers, strings)
    elif isinstance(node, list):
        for value in node:
            _json_numbers(value, numbers, strings)
    elif isinstance(node, str):
        strings.append(node)
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        numbers.add(str(node))
    else:
        numbers.update({f"{node:.3f}", f"{node * 100:g}"})


def test_every_number_in_the_report_appears_in_the_comparison_json():
    out = compare_variants(_eval_metrics(0.0, se={"macro_auc": 0.02}), _eval_metrics(0.15),
                           stratified_explain=_explain(0.8), center_explain=_explain(0.55))
    report = render_report(json.loads(json.dumps(out)))
    numbers, strings = set(), []
    _json_numbers(out, numbers, strings)
    text = report
    for s in sorted(strings, key=len, reverse=True):  # metric names like iou@0.5 come from the JSON too
        text = text.replace(s, " ")
    found = re.findall(r"-?\d+(?:\.\d+)?", text)
    assert found, "the report shows no numbers"
    assert [n for n in found if n not in numbers] == []
    assert report.startswith(f"> **{DISCLAIMER}**")
    gap = fmt_ci(out["headline"]["macro_auc"]["gap"])  # the macro gap, rendered from the dict in the shared format
    assert gap.startswith("0.150 (") and f"| {gap} |" in report


def test_the_stage_writes_json_and_report_and_works_before_explain_exists(tmp_path):
    for variant, shift in (("stratified", 0.0), ("center", 0.1)):
        (tmp_path / variant / "eval").mkdir(parents=True)
        (tmp_path / variant / "eval" / "metrics.json").write_text(json.dumps(_eval_metrics(shift)))
    spec = importlib.util.spec_from_file_location("compare_stage", Path(__file__).parents[1] / "stages" / "compare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    args = ["--stratified", str(tmp_path / "stratified"), "--center", str(tmp_path / "center"),
            "--out", str(tmp_path / "compare.json"), "--report", str(tmp_path / "comparison.md")]
    assert stage.main(args) == 0
    first = (tmp_path / "compare.json").read_text()
    assert json.loads(first)["headline"]["accuracy"]["gap"]["value"] == pytest.approx(0.1)
    assert "| accuracy | 0.900 (0.850–0.950) | 0.800 (0.750–0.850) |" in (tmp_path / "comparison.md").read_text()
    assert stage.main(args) == 0 and (tmp_path / "compare.json").read_text() == first  # deterministic


def test_missing_or_broken_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eval/metrics.json: evaluation metrics not found"):
        load_variant(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match=r"metrics.json: not valid JSON"):
        load_variant(tmp_path)
    with pytest.raises(ValueError, match=r"ci_level differs or is missing"):
        compare_variants(_eval_metrics(0.0), _eval_metrics(0.1, ci_level=0.9))
    center = _eval_metrics(0.1)
    del center["headline"]["macro_f1"]
    with pytest.raises(ValueError, match=r"center metrics.json lacks headline metric 'macro_f1'"):
        compare_variants(_eval_metrics(0.0), center)


def _eval_metrics_pair() -> tuple[dict, dict]:
    pair = []
    for shift in (0.0, 0.2):
        m = _eval_metrics(shift)
        m["per_class"] = {c: {"auc": _ci(0.9 - shift - 0.05 * i, 0.85 - shift - 0.05 * i, 0.95 - shift - 0.05 * i),
                              "support": 10} for i, c in enumerate(m["class_names"])}
        pair.append(m)
    return pair[0], pair[1]


def _with_classes(metrics: dict, present: list[str]) -> dict:
    """A copy of an evaluate metrics dict whose test holds only ``present`` classes (support 0 elsewhere)."""
    out = copy.deepcopy(metrics)
    for name, entry in out["per_class"].items():
        entry["support"] = entry.get("support", 10) if name in present else 0
    return out


def test_the_gap_is_recomputed_over_the_shared_classes_when_the_test_class_sets_differ():
    s_metrics, c_metrics = _eval_metrics_pair()
    c_metrics = _with_classes(c_metrics, ["Benign", "Malignant"])
    out = compare_variants(s_metrics, c_metrics)
    block = out["like_for_like"]
    assert block["same_classes"] is False and block["shared"] == ["Benign", "Malignant"]
    expected = sum(s_metrics["per_class"][c]["auc"]["value"] for c in ("Benign", "Malignant")) / 2
    assert block["macro_auc_shared"]["stratified"]["value"] == pytest.approx(expected)
    assert "Over the shared classes (Benign, Malignant)" in render_report(out)
    same = compare_variants(*_eval_metrics_pair())
    assert same["like_for_like"]["same_classes"] is True and "macro_auc_shared" not in same["like_for_like"]
