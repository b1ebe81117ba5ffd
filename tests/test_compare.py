"""Tests for assurexray.assessment.compare and stages/compare.py on hand-made metrics files."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

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


# --- the paired like-for-like gap: both models on the test images both test sets hold ----------------------

CLASSES = ["Normal", "Benign", "Malignant"]


def _predictions(image_ids, labels, probs, *, groups=None, centers=None) -> pd.DataFrame:
    """Test rows of an evaluate predictions.csv (the columns the paired gap reads)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    frame = pd.DataFrame({"image_id": list(image_ids), "partition": "test",
                          "label": [CLASSES[k] for k in labels], "label_idx": labels})
    for k, name in enumerate(CLASSES):
        frame[f"prob_{name}"] = probs[:, k]
    frame["group"] = list(groups) if groups is not None else [f"g{i}" for i in image_ids]
    frame["center"] = list(centers) if centers is not None else ["2"] * len(labels)
    return frame


def _model(labels: np.ndarray, seed: int, signal: float = 1.0) -> np.ndarray:
    """Probabilities of a noisy model: the true class gets ``signal`` extra logit."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(labels.size, 3)) + signal * np.eye(3)[labels]
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _paired_metrics(cluster: bool = True) -> dict:
    m = _eval_metrics(0.0)
    m["bootstrap"].update(resamples=400, seed=3, cluster=cluster)
    return m


def _shared_fixture():
    """Centre test: 60 images of centres 2/3 (all also in the stratified test); stratified test: those 60 plus 40
    centre-1 images. The centre model is the stratified one with small noise: the paired difference is small and
    stable, while each model's own interval is wide."""
    y_shared, y_own = np.tile([0, 1, 2], 20), np.tile([0, 1, 2], 14)[:40]
    shared_ids, own_ids = [f"IMG{i:03d}" for i in range(60)], [f"IMG{i:03d}" for i in range(100, 140)]
    p_strat = _model(np.r_[y_shared, y_own], seed=0)
    rng = np.random.default_rng(9)
    p_cent = np.clip(p_strat[:60] + rng.normal(scale=0.02, size=(60, 3)), 1e-3, None)
    p_cent /= p_cent.sum(axis=1, keepdims=True)
    centers = ["2", "3"] * 30
    stratified = _predictions(shared_ids + own_ids, np.r_[y_shared, y_own], p_strat, centers=centers + ["1"] * 40)
    center = _predictions(shared_ids, y_shared, p_cent, centers=centers)
    return stratified, center


def _macro_auc(labels, probs) -> float:
    return float(np.mean([roc_auc_score(labels == k, probs[:, k]) for k in np.unique(labels)]))


def test_the_paired_gap_scores_both_models_on_the_shared_test_images_only():
    stratified, center = _shared_fixture()
    out = compare_variants(_paired_metrics(), _paired_metrics(), stratified_predictions=stratified,
                           center_predictions=center)
    paired = out["like_for_like"]["paired"]
    assert (paired["n_images"], out["shared_test_images"], paired["centers"]) == (60, 60, {"2": 30, "3": 30})
    shared = stratified.iloc[:60]
    want_s = _macro_auc(shared["label_idx"].to_numpy(), shared[[f"prob_{c}" for c in CLASSES]].to_numpy())
    want_c = _macro_auc(center["label_idx"].to_numpy(), center[[f"prob_{c}" for c in CLASSES]].to_numpy())
    assert paired["macro_auc"]["stratified"]["value"] == pytest.approx(want_s)  # not the 100 stratified images
    assert paired["macro_auc"]["center"]["value"] == pytest.approx(want_c)
    assert paired["gap"]["value"] == pytest.approx(want_s - want_c)
    report = render_report(json.loads(json.dumps(out)))
    assert "Like-for-like gap: both models on the same test images (paired)" in report
    assert "they share 60 test images, so they are not independent" in report
    assert f"| macro_auc (shared test images) | {fmt_ci(paired['macro_auc']['stratified'])} |" in report
    numbers, strings = set(), []
    _json_numbers(out, numbers, strings)
    numbers |= {text for text in strings if text.isdigit()}  # centre ids are keys: replaced, "3" would eat digits
    for text in sorted((t for t in strings if not t.isdigit()), key=len, reverse=True):
        report = report.replace(text, " ")
    assert [n for n in re.findall(r"-?\d+(?:\.\d+)?", report) if n not in numbers] == []


def test_the_paired_gap_interval_comes_from_one_bootstrap_shared_by_both_models():
    """Scored on the same resamples, a model against itself differs by exactly 0 in every resample, and a
    slightly perturbed copy by little; separate resamples (or the independent-sets formula) would give each
    model's own, much wider, spread."""
    stratified, center = _shared_fixture()
    itself = center.copy()
    itself[[f"prob_{c}" for c in CLASSES]] = stratified.iloc[:60][[f"prob_{c}" for c in CLASSES]].to_numpy()
    same = compare_variants(_paired_metrics(), _paired_metrics(), stratified_predictions=stratified,
                            center_predictions=itself)["like_for_like"]["paired"]
    assert same["gap"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert same["macro_auc"]["stratified"]["ci_high"] - same["macro_auc"]["stratified"]["ci_low"] > 0.1
    paired = compare_variants(_paired_metrics(), _paired_metrics(), stratified_predictions=stratified,
                              center_predictions=center)["like_for_like"]["paired"]
    independent = gap_ci(paired["macro_auc"]["stratified"], paired["macro_auc"]["center"], ci_level=0.95)
    width = lambda ci: ci["ci_high"] - ci["ci_low"]  # noqa: E731
    assert 0 < width(paired["gap"]) < 0.25 * width(independent)


def test_the_paired_bootstrap_resamples_whole_case_groups():
    """Each shared image repeated as 4 views of one case adds no evidence: clustered, the paired interval
    equals that of the cases alone; resampling single images would shrink it."""
    stratified, center = _shared_fixture()
    stratified = stratified.iloc[:60]

    def views(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.loc[frame.index.repeat(4)].reset_index(drop=True)
        out["image_id"] = [f"{i}-v{k}" for i, k in zip(out["image_id"], np.tile(range(4), len(frame)))]
        return out

    def gap(s, c, cluster):
        return compare_variants(_paired_metrics(cluster), _paired_metrics(cluster), stratified_predictions=s,
                                center_predictions=c)["like_for_like"]["paired"]["gap"]

    alone, clustered = gap(stratified, center, True), gap(views(stratified), views(center), True)
    by_image = gap(views(stratified), views(center), False)
    assert (clustered["ci_low"], clustered["ci_high"]) == pytest.approx((alone["ci_low"], alone["ci_high"]))
    assert clustered["ci_high"] - clustered["ci_low"] > 1.5 * (by_image["ci_high"] - by_image["ci_low"])


def test_without_shared_images_or_predictions_the_paired_gap_says_why():
    stratified, center = _shared_fixture()
    apart = compare_variants(_paired_metrics(), _paired_metrics(), stratified_predictions=stratified.iloc[60:],
                             center_predictions=center)
    assert apart["like_for_like"]["paired"]["n_images"] == 0 and apart["shared_test_images"] == 0
    assert "Not computed: the two test sets share no image" in render_report(apart)
    absent = compare_variants(_paired_metrics(), _paired_metrics())
    assert absent["like_for_like"]["paired"] is None
    assert "Not computed: a variant's eval/predictions.csv is absent." in render_report(absent)


def test_a_shared_image_with_another_label_or_group_or_unequal_bootstrap_settings_is_refused():
    stratified, center = _shared_fixture()
    relabelled = center.copy()
    relabelled.loc[7, ["label", "label_idx"]] = ["Malignant", 2]
    with pytest.raises(ValueError, match=r"test image 'IMG007': label 'Benign' in the stratified predictions.csv "
                                         r"but 'Malignant' in the centre's"):
        compare_variants(_paired_metrics(), _paired_metrics(), stratified_predictions=stratified,
                         center_predictions=relabelled)
    other = _paired_metrics()
    other["bootstrap"]["seed"] = 4
    with pytest.raises(ValueError, match=r"bootstrap\.seed differs or is missing between the variants"):
        compare_variants(_paired_metrics(), other, stratified_predictions=stratified, center_predictions=center)


def test_the_stage_computes_the_paired_gap_from_both_predictions_files(tmp_path):
    stratified, center = _shared_fixture()
    for variant, frame in (("stratified", stratified), ("center", center)):
        (tmp_path / variant / "eval").mkdir(parents=True)
        (tmp_path / variant / "eval" / "metrics.json").write_text(json.dumps(_paired_metrics()))
        frame.to_csv(tmp_path / variant / "eval" / "predictions.csv", index=False)
    spec = importlib.util.spec_from_file_location("compare_stage", Path(__file__).parents[1] / "stages" / "compare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    assert stage.main(["--stratified", str(tmp_path / "stratified"), "--center", str(tmp_path / "center"),
                       "--out", str(tmp_path / "compare.json"), "--report", str(tmp_path / "comparison.md")]) == 0
    paired = json.loads((tmp_path / "compare.json").read_text())["like_for_like"]["paired"]
    assert paired["n_images"] == 60 and paired["cluster"] is True
    assert "Paired gap: both models scored on the same images" in (tmp_path / "comparison.md").read_text()


def test_an_unreliable_threshold_is_named_where_the_comparison_shows_the_thresholds():
    center = _eval_metrics(0.1)
    center["operating_point"].update(reliable=False, reason="chosen on 5 validation Malignant image(s)")
    out = compare_variants(_eval_metrics(0.0), center)
    assert out["threshold_caveat"] == {
        "stratified": None, "center": "UNRELIABLE Malignant threshold: chosen on 5 validation Malignant image(s)."}
    section = render_report(out).split("## Malignant operating point")[1].split("\n## ")[0]
    assert "**Centre hold-out**: UNRELIABLE Malignant threshold: chosen on 5 validation Malignant image(s)." in section
    assert "UNRELIABLE" not in render_report(compare_variants(_eval_metrics(0.0), _eval_metrics(0.1)))
