"""Tests for assurexray.publishing.report, model_card, report_data and stages/report.py on a hand-made metrics tree
(schemas: docs/ARCHITECTURE.md)."""

from __future__ import annotations

import base64
import copy
import importlib.metadata
import io
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from assurexray import DISCLAIMER, __version__  # noqa: E402
from assurexray.publishing.model_card import render_model_card  # noqa: E402
from assurexray.core.rendering import fmt_ci, fmt_diff  # noqa: E402
from assurexray.publishing.report import REFERENCES, render_report_html, render_report_markdown, write_reports  # noqa: E402
from assurexray.publishing.report_data import collect_report_data, tracked_params  # noqa: E402
from assurexray.core.schema import DATASET_CITATION, DATASET_LICENSE  # noqa: E402

CLASSES = ["Normal", "Benign", "Malignant"]
MITCHELL_SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
                     "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]
# A decimal number not glued to a word or another number (the "0" of "lite0" and "IMG000001" do not count).
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")
PARAMS = {
    "data": {"source": "btxrd"},
    "prepare": {"image_px": 96},
    "model": {"backbone": "tf_efficientnet_lite0", "pretrained": "none", "dropout": 0.15},
    "train": {"epochs": 9, "batch_size": 24, "lr": 0.0007, "weight_decay": 2.5e-05, "monitor": "macro_auc",
              "augment": {"hflip": 0.45, "rotate_deg": 6, "clahe": False}},
    "evaluate": {"bootstrap_resamples": 250, "ci_level": 0.9, "calibration_bins": 12,
                 "malignant_target_sensitivity": 0.85},
    "explain": {"method": "gradcam", "target": "predicted", "thresholds": [0.35, 0.55], "baseline_sigma": 0.22},
}


def _ci(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def _eval_metrics(shift: float) -> dict:
    """eval/metrics.json with distinct, hand-checkable values; ``shift`` separates the two variants."""
    headline = {m: _ci(round(0.9121 - shift - i / 100, 4), round(0.8713 - shift - i / 100, 4),
                       round(0.9482 - shift - i / 100, 4))
                for i, m in enumerate(["macro_auc", "macro_ap", "accuracy", "balanced_accuracy", "macro_f1",
                                       "malignant_sensitivity_argmax", "malignant_specificity_argmax"])}
    per_class = {c: {m: _ci(round(0.61 + j / 50 + k / 500 - shift, 4), round(0.52 + j / 50 - shift, 4),
                            round(0.71 + j / 50 - shift, 4))
                     for k, m in enumerate(["auc", "ap", "sensitivity", "specificity", "ppv", "npv", "f1"])}
                 | {"support": 11 + j}
                 for j, c in enumerate(CLASSES)}
    per_class["Benign"]["ppv"] = _ci(None, None, None)  # an undefined metric renders as "undefined"
    return {
        "n_test": 36 if shift == 0 else 47, "n_val": 21, "class_names": CLASSES,
        "headline": headline, "per_class": per_class,
        "confusion": {"labels": CLASSES, "counts": [[9, 1, 1], [2, 8, 2], [0, 3, 10]],
                      "normalized": [[0.8182, 0.0909, 0.0909], [0.1667, 0.6667, 0.1667], [0.0, 0.2308, 0.7692]]},
        "calibration": {"temperature": 1.4375 + shift, "ece_before": 0.0812, "ece_after": 0.0415 + shift, "bins": 12},
        "operating_point": {"class": "Malignant", "threshold": 0.2731 + shift, "target_sensitivity": 0.85,
                            "val_sensitivity": 0.8667, "test_sensitivity": _ci(0.8462 - shift, 0.6154, 0.9999),
                            "test_specificity": _ci(0.7391, 0.5652, 0.8913), **_threshold_choice(shift)},
        "bootstrap": {"resamples": 250, "ci_level": 0.9, "cluster": False, "seconds": 0.42},
    }


def _threshold_choice(shift: float) -> dict:
    """How evaluate chose the threshold: the stratified one on enough validation Malignant images, the centre
    hold-out's (as on BTXRD) on too few, so it is marked unreliable."""
    if shift == 0:
        return {"val_positives": 31, "reliable": True, "rule": "sensitivity_lower_bound", "reason": None}
    return {"val_positives": 5, "reliable": False, "rule": "capped_point_estimate",
            "reason": "chosen on 5 validation Malignant image(s), fewer than the 17 needed for a 90% lower confidence "
                      "bound on sensitivity to reach 0.85; fitted alone the threshold would be 0.988, so the rule "
                      "falls back to that value capped at 0.333 (just under 1/3, so every image whose most "
                      "probable class is Malignant is flagged)"}


def _loc(value: float, n: int) -> dict:
    return {"pointing_game": _ci(value, value - 0.125, value + 0.125),
            "energy_inside": _ci(value / 2, value / 2 - 0.05, value / 2 + 0.05),
            "iou@0.35": _ci(value / 3, value / 3 - 0.04, value / 3 + 0.04),
            "iou@val": _ci(value / 4, value / 4 - 0.03, value / 4 + 0.03),
            "dice@val": _ci(value / 5, value / 5 - 0.02, value / 5 + 0.02), "n": n}


def _map_block(value: float, centers: tuple[str, ...]) -> dict:
    """One map's figures as explain.explain_variant breaks them down (overall, class, centre, outcome)."""
    return {"overall": _loc(value, 14),
            "per_class": {"Benign": _loc(value - 0.0625, 6), "Malignant": _loc(value + 0.0625, 8)},
            "per_center": {c: _loc(value + (-0.125 if i == 0 else 0.0625), 8 if i == 0 else 6)
                           for i, c in enumerate(centers)},
            "by_outcome": {"correct": _loc(value + 0.0625, 10), "incorrect": _loc(value - 0.1875, 4)}}


def _paired(first: dict, second: dict) -> dict:
    """Paired differences (first minus second) with an interval of +-0.0625, in the same breakdown."""
    def diff(a: dict, b: dict) -> dict:
        out = {}
        for m in a:
            if m == "n":
                continue
            value = round(a[m]["value"] - b[m]["value"], 4)
            out[m] = _ci(value, round(value - 0.0625, 4), round(value + 0.0625, 4))
        return out | {"n": a["n"]}

    return {k: diff(v, second[k]) if k == "overall" else {g: diff(b, second[k][g]) for g, b in v.items()}
            for k, v in first.items()}


def _explain(value: float, *, lesion: float | None = None, centers: tuple[str, ...] = ("1", "2")) -> dict:
    """explain/metrics.json (explain.explain_variant's shape); ``lesion`` None = a model without a lesion head."""
    model, baseline = _map_block(value, centers), _map_block(0.3125, centers)
    comparisons = {"gradcam_vs_baseline": _paired(model, baseline)}
    lesion_map = None if lesion is None else _map_block(lesion, centers)
    if lesion_map is not None:
        comparisons["lesion_map_vs_baseline"] = _paired(lesion_map, baseline)
        comparisons["lesion_map_vs_gradcam"] = _paired(lesion_map, model)
        # the lesion map worse than Grad-CAM among misclassified tumours: a difference negative at both ends
        comparisons["lesion_map_vs_gradcam"]["by_outcome"]["incorrect"]["pointing_game"] = _ci(-0.2374, -0.3371,
                                                                                               -0.1382)
    return {"method": "gradcam", "target": "predicted", "target_layer": "conv_head", "n_images": 14,
            "n_skipped_no_mask": 2, "val_threshold": 0.55, "baseline_val_threshold": 0.45,
            "lesion_val_threshold": None if lesion is None else 0.65, "thresholds": [0.35, 0.55],
            "intervals": "case-clustered bootstrap (whole case groups resampled); paired: every map is scored on "
                         "the same resamples",
            "model": model, "baseline": baseline, "lesion_map": lesion_map, "comparisons": comparisons,
            "sanity": {"randomized_rank_correlation": _ci(0.1432, 0.0871, 0.2019), "randomization": "full",
                       "n": 14, "n_undefined": 0}}


def _split(test_centers: dict) -> dict:
    n_test = sum(test_centers.values())
    counts = {"train": {"Normal": 40, "Benign": 31, "Malignant": 17}, "val": {"Normal": 8, "Benign": 6,
                                                                              "Malignant": 4},
              "test": {"Normal": 11, "Benign": 12, "Malignant": 13}}
    return {"counts": counts, "n_images": {"train": 88, "val": 18, "test": n_test, "total": 106 + n_test},
            "n_groups": {"train": 70, "val": 15, "test": 29, "total": 114},
            "centers": {"train": {"1": 88}, "val": {"1": 18}, "test": test_centers}}


def _compare(strat: dict, cent: dict) -> dict:
    headline = {m: {"stratified": strat["headline"][m], "center": cent["headline"][m],
                    "gap": _ci(0.1313, 0.0517, 0.2109)} for m in strat["headline"]}
    return {"headline": headline,
            "localization": {"pointing_game": {"stratified": _ci(0.7143, 0.5, 0.9286),
                                               "center": _ci(0.5714, 0.3571, 0.7857)}},
            "operating_point": {m: {"stratified": strat["operating_point"][m], "center": cent["operating_point"][m],
                                    "gap": _ci(0.1313, -0.0911, 0.3537)}
                                for m in ("test_sensitivity", "test_specificity")},
            "n_test": {"stratified": 36, "center": 47}, "ci_level": 0.9,
            "gap_method": "gap = stratified - center, interval from both bootstrap distributions"}


def _audit() -> dict:
    return {"n_images": 142, "n_centers": 3, "class_counts": {"Normal": 59, "Benign": 49, "Malignant": 34},
            "class_share_pct": {"Normal": 41.5, "Benign": 34.5, "Malignant": 23.9},
            "class_by_center": {"1": {"Normal": 30, "Benign": 25, "Malignant": 18, "total": 73},
                                "2": {"Normal": 20, "Benign": 14, "Malignant": 10, "total": 44},
                                "3": {"Normal": 9, "Benign": 10, "Malignant": 6, "total": 25}},
            "views": {"frontal": 97, "lateral": 41, "oblique": 4},
            "groups": {"n_groups": 114, "n_multi_image_groups": 23, "largest_group": 3},
            "annotations": {"tumour_annotated_pct": 96.4, "tumour_without_annotation": 3},
            "duplicates": {"exact_pairs": 2, "near_pairs": 5, "groups": 6, "cross_class_pairs": 1,
                           "cross_center_pairs": 0},
            "leakage": {"id_1nn_class_accuracy_pct": 88.7, "majority_class_pct": 41.5,
                        "grayscale_mode_pct_by_center": {"1": 100.0, "2": 62.5, "3": 0.0}}}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _png(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1, 1), dpi=32)
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path.read_bytes()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A complete metrics/plots tree for both variants, plus params.yaml (only roc.png of stratified exists).

    The stratified model has a lesion head (a lesion map in its explain metrics); the centre hold-out has none."""
    strat, cent = _eval_metrics(0.0), _eval_metrics(0.1313)
    m = tmp_path / "metrics"
    _write(m / "audit.json", _audit())
    _write(m / "compare.json", _compare(strat, cent))
    for v, ev, explain, centers in (("stratified", strat, _explain(0.7143, lesion=0.8125), {"1": 30, "2": 6}),
                                    ("center", cent, _explain(0.5714, centers=("2", "3")), {"2": 30, "3": 17})):
        _write(m / v / "eval" / "metrics.json", ev)
        _write(m / v / "eval" / "operating_point.json",
               {"temperature": ev["calibration"]["temperature"], "malignant_threshold": ev["operating_point"]
                ["threshold"], "target_sensitivity": 0.85, "val_sensitivity": 0.8667,
                "model_sha256": ("c0ffee" if v == "center" else "bead") * 8})
        _write(m / v / "explain" / "metrics.json", explain)
        _write(m / v / "split.json", _split(centers))
        _write(m / v / "train" / "metrics.json", {"step": 6, "best_epoch": 4, "monitor": "macro_auc",
                                                  "best_score": 0.8838, "epochs_run": 7})
    _png(tmp_path / "plots" / "stratified" / "eval" / "roc.png")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS), encoding="utf-8")
    return tmp_path


def _data(root: Path, params: dict | None = None):
    return collect_report_data(root / "metrics", root / "plots", params or PARAMS)


# ----------------------------------------------------------------------------------- no number by hand


def _leaves(obj):
    """Every number, numeric-looking key and string in a JSON/YAML structure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def _allowed_numbers(root: Path) -> set[str]:
    """Each source value in every format the report may print it (3 dp, 1 dp, as written, int, percent)."""
    sources = [json.loads(p.read_text()) for p in (root / "metrics").rglob("*.json")]
    sources.append(yaml.safe_load((root / "params.yaml").read_text()))
    return _number_formats(sources)


def _number_formats(sources: list) -> set[str]:
    """Every number of ``sources`` (parsed JSON/YAML) in each format a document may print it."""
    allowed: set[str] = set()
    for source in sources:
        for leaf in _leaves(source):
            if isinstance(leaf, bool) or leaf is None:
                continue
            if isinstance(leaf, str):
                allowed.update(NUMBER.findall(leaf))
                continue
            x = float(leaf)
            allowed.update({f"{x:.3f}".replace("-0.000", "0.000"), f"{x:.1f}", f"{x * 100:g}",
                            format(Decimal(repr(leaf)), "f")})
            if isinstance(leaf, int):
                allowed.add(str(leaf))
    return allowed


def _strip_fixed_texts(text: str) -> str:
    """Remove the citation, licence, reference and version texts (their numbers are not results)."""
    fixed = [DATASET_CITATION, DATASET_LICENSE, __version__, importlib.metadata.metadata("assurexray")["License"],
             *REFERENCES]
    for item in sorted(fixed, key=len, reverse=True):
        text = text.replace(item, "")
    return text


@pytest.mark.parametrize("name", ["model_card.md", "report.md"])
def test_every_number_in_a_markdown_document_comes_from_a_metrics_or_params_file(tree, name):
    write_reports(_data(tree), tree / "reports")
    text = _strip_fixed_texts((tree / "reports" / name).read_text(encoding="utf-8"))
    found = NUMBER.findall(text)
    assert len(found) > 40  # the check is not vacuous: the documents are full of numbers
    assert "| Lesion map - Grad-CAM |" in text  # ... and it covers the lesion-map section
    stray = sorted(set(found) - _allowed_numbers(tree))
    assert stray == [], f"numbers not traceable to metrics/params: {stray}"


def test_a_hand_typed_number_would_be_caught_by_the_number_check(tree):
    text = render_model_card(_data(tree)) + "\nThe model reaches 0.987 on a made-up benchmark.\n"
    assert "0.987" in set(NUMBER.findall(_strip_fixed_texts(text))) - _allowed_numbers(tree)


@pytest.mark.parametrize("render", [render_model_card, render_report_markdown, render_report_html])
def test_headline_values_are_read_from_the_metrics_file_not_typed(tree, render):
    path = tree / "metrics" / "center" / "eval" / "metrics.json"
    assert "0.781 (0.740–0.817)" in render(_data(tree))
    metrics = json.loads(path.read_text())
    metrics["headline"]["macro_auc"] = _ci(0.6543, 0.6012, 0.7098)
    _write(path, metrics)
    text = render(_data(tree))
    assert "0.654 (0.601–0.710)" in text and "0.781 (0.740–0.817)" not in text


# ------------------------------------------------------------------------------------ document content


@pytest.mark.parametrize("name", ["model_card.md", "report.md", "report.html"])
def test_disclaimer_is_at_the_top_and_the_bottom_of_every_document(tree, name):
    write_reports(_data(tree), tree / "reports")
    text = (tree / "reports" / name).read_text(encoding="utf-8")
    first, last = text.find(DISCLAIMER), text.rfind(DISCLAIMER)
    assert 0 <= first < len(text) // 10
    assert last > len(text) * 0.9 and last != first


def test_model_card_has_the_mitchell_sections_in_order(tree):
    headings = re.findall(r"^## (.+)$", render_model_card(_data(tree)), flags=re.M)
    assert headings == MITCHELL_SECTIONS


def test_model_card_states_model_details_intended_use_and_no_date(tree):
    card = render_model_card(_data(tree))
    for fact in ("`tf_efficientnet_lite0`", "random initialisation", "96 x 96 px", "Normal, Benign, Malignant",
                 f"`{'bead' * 8}`", f"`{'c0ffee' * 8}`", "**Date**: none recorded", "NOT FOR CLINICAL USE",
                 "**Out of scope**", DATASET_LICENSE):
        assert fact in card


def test_model_card_lists_clahe_as_preprocessing_applied_at_inference_not_as_training_only(tree):
    card = render_model_card(_data(tree))
    pre = next(line for line in card.splitlines() if line.startswith("- Preprocessing"))
    aug = next(line for line in card.splitlines() if line.startswith("- Augmentation (training only)"))
    assert "inference" in pre and "`clahe` false" in pre
    assert "clahe" not in aug and "`hflip` 0.45" in aug


def test_report_has_methods_results_calibration_operating_point_localisation_audit_and_citation(tree):
    report = render_report_markdown(_data(tree))
    for fact in ("## Methods", "| Macro AUC (one-vs-rest) | 0.912 (0.871–0.948) | 0.781 (0.740–0.817) | "
                 "0.131 (0.052 to 0.211) |", "| Centre hold-out | 1.569 | 0.081 | 0.173 | 12 |",
                 "| Centre hold-out | 0.404 | 0.850 | 5 | UNRELIABLE: too few validation Malignant images; fallback "
                 "rule (see below) | 0.867 | 0.715 (0.615–1.000) | 0.739 (0.565–0.891) |",
                 "| Benign | 0.630 (0.540–0.730) |", "| undefined |", "| Malignant (actual) | 0 | 3 | 10 |",
                 "test on centre(s) 2, 3", "| Pointing game hit rate | 0.714 (0.589–0.839) | 0.312 (0.188–0.438) "
                 "| model above baseline |", "0.143 (0.087 to 0.202) over 14 images", "96.4%",
                 "measurably worse on unseen centres", "90% bootstrap intervals", DATASET_CITATION,
                 "Gap at the operating point (stratified - centre): Malignant sensitivity at the operating point "
                 "0.131 (-0.091 to 0.354); Malignant specificity"):
        assert fact in report


@pytest.mark.parametrize(("gap", "verdict"), [
    (_ci(0.1313, 0.0517, 0.2109), "the model is measurably worse on unseen centres"),
    (_ci(-0.0625, -0.1250, -0.0125), "the model is measurably better on unseen centres"),
    (_ci(0.0313, -0.0412, 0.1038), "the interval includes no difference"),
    (_ci(0.0313, None, None), "no interval, so no conclusion"),
])
def test_the_gap_verdict_follows_the_interval_in_compare_json(tree, gap, verdict):
    path = tree / "metrics" / "compare.json"
    compare = json.loads(path.read_text())
    compare["headline"]["macro_auc"]["gap"] = gap
    _write(path, compare)
    for text in (render_model_card(_data(tree)), render_report_markdown(_data(tree))):
        assert f"gap {fmt_diff(gap)}; {verdict}" in text


def _section(text: str, heading: str) -> str:
    """The markdown under ``heading`` (e.g. ``"## Summary"``) up to the next heading of any level."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    following = re.search(r"^#{1,6} ", text[start:], flags=re.M)
    return text[start:start + following.start()] if following else text[start:]


CENTRE_CAVEAT = "**Centre hold-out**: UNRELIABLE Malignant threshold: chosen on 5 validation Malignant image(s)"
DOCUMENT_SECTIONS = {  # every section that shows a threshold or the sensitivity/specificity it gives
    "report": ("## Summary", "### Malignant operating point", "### Per centre (test)", "## Limitations"),
    "model_card": ("## Quantitative analyses", "## Caveats and recommendations"),
}


def test_an_unreliable_threshold_carries_its_caveat_wherever_its_numbers_are_shown(tree):
    """The centre hold-out's threshold rests on 5 validation Malignant images (metrics.json says reliable:
    false, with its reason): each section showing it says so; once evaluate marks it reliable, none does."""
    renders = {"report": render_report_markdown, "model_card": render_model_card}
    for document, sections in DOCUMENT_SECTIONS.items():
        text = renders[document](_data(tree))
        for heading in sections:
            section = _section(text, heading)
            assert "UNRELIABLE Malignant threshold: chosen on 5 validation Malignant image(s), fewer than the 17" \
                   in section, (document, heading)
            assert "**Stratified split**: UNRELIABLE" not in section  # the reliable one carries no caveat
    summary = _section(render_report_markdown(_data(tree)), "## Summary")
    centre_line = next(line for line in summary.splitlines() if line.startswith("- Centre hold-out"))
    assert "specificity 0.739 (0.565–0.891). UNRELIABLE Malignant threshold" in centre_line
    path = tree / "metrics" / "center" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["operating_point"].update(_threshold_choice(0.0))
    _write(path, metrics)
    for render in renders.values():
        assert "UNRELIABLE Malignant threshold" not in render(_data(tree))


def test_the_paired_like_for_like_gap_is_reported_with_what_its_interval_covers(tree):
    path = tree / "metrics" / "compare.json"
    compare = json.loads(path.read_text())
    compare["like_for_like"] = {"same_classes": False, "paired": {
        "n_images": 23, "n_groups": 19, "centers": {"2": 15, "3": 8}, "classes": ["Benign", "Malignant"],
        "macro_auc": {"stratified": _ci(0.8125, 0.7031, 0.9062), "center": _ci(0.6875, 0.5469, 0.7969)},
        "gap": _ci(0.125, 0.0312, 0.2188), "resamples": 250, "cluster": True,
        "method": "both models scored on the same images, one paired bootstrap"}}
    _write(path, compare)
    for text in (render_model_card(_data(tree)), render_report_markdown(_data(tree))):
        assert ("Like for like, on the 23 test images both sets hold (classes Benign, Malignant): macro AUC "
                "0.812 (0.703–0.906) for the stratified model versus 0.688 (0.547–0.797) for the centre model, "
                "paired gap 0.125 (0.031 to 0.219); the model is measurably worse on unseen centres.") in text
        assert "their macro averages run over different classes: not a like-for-like number" in text
    assert ("Paired gap interval: both models scored on the same images, one paired bootstrap."
            in render_report_markdown(_data(tree)))


@pytest.mark.parametrize(("baseline", "verdict"), [
    (_ci(0.3125, 0.1875, 0.4375), "model above baseline"),
    (_ci(0.9375, 0.875, 1.0), "model below baseline"),
    (_ci(0.6875, 0.5625, 0.8125), "intervals overlap"),
    (_ci(None, None, None), "undefined"),
])
def test_model_versus_baseline_reads_whether_the_intervals_separate(tree, baseline, verdict):
    path = tree / "metrics" / "stratified" / "explain" / "metrics.json"
    explain = json.loads(path.read_text())
    explain["baseline"]["overall"]["pointing_game"] = baseline
    _write(path, explain)
    row = f"| Pointing game hit rate | 0.714 (0.589–0.839) | {fmt_ci(baseline)} | {verdict} |"
    assert row in render_report_markdown(_data(tree))


# ------------------------------------------------------------------------------------------- lesion map

LESION_START, LESION_END = "The lesion map is the model's own estimate", "whose interval excludes zero is a difference."


def _lesion_section(text: str) -> str:
    """The stratified variant's lesion-map section (its sentence, tables and interval note)."""
    start = text.index(LESION_START)
    return text[start:text.index(LESION_END, start) + len(LESION_END)]


@pytest.mark.parametrize("render", [render_model_card, render_report_markdown])
def test_every_number_in_the_lesion_map_section_is_read_from_that_variants_explain_metrics(tree, render):
    section = _strip_fixed_texts(_lesion_section(render(_data(tree))))
    found = NUMBER.findall(section)
    assert len(found) > 250  # 15 rows of 6 intervals and an image count
    source = json.loads((tree / "metrics" / "stratified" / "explain" / "metrics.json").read_text())
    stray = sorted(set(found) - _number_formats([source]))
    assert stray == [], f"numbers not traceable to metrics/stratified/explain/metrics.json: {stray}"


@pytest.mark.parametrize("render", [render_model_card, render_report_markdown, render_report_html])
def test_the_lesion_map_sits_beside_grad_cam_and_the_baseline_overall_per_centre_and_by_outcome(tree, render):
    text = render(_data(tree))
    section = _lesion_section(text)
    for row in (
        # map values, then the paired differences (lesion - Grad-CAM, lesion - Gaussian, Grad-CAM - Gaussian)
        "all test | Pointing game hit rate | 0.812 (0.688–0.938) | 0.714 (0.589–0.839) | 0.312 (0.188–0.438) | "
        "0.098 (0.036 to 0.161) | 0.500 (0.438 to 0.562) | 0.402 (0.339 to 0.464) | 14",
        "centre 1 | Dice at the validation-chosen threshold | 0.138 (0.118–0.158) | 0.118 (0.098–0.138) | "
        "0.037 (0.017–0.057) | 0.020 (-0.043 to 0.082) |",
        "centre 2 | Energy inside the lesion | 0.438 (0.388–0.487) |",
        "correctly classified | Pointing game hit rate | 0.875 (0.750–1.000) |",
        "incorrectly classified | Pointing game hit rate | 0.625 (0.500–0.750) | 0.527 (0.402–0.652) | "
        "0.125 (0.000–0.250) | -0.237 (-0.337 to -0.138) |",
    ):
        cells = row.rstrip(" |").replace(" | ", "</td><td>") if render is render_report_html else row
        assert cells in section, row
    assert "–-" not in section  # a negative interval never puts a dash before a minus sign
    assert "lesion map 0.650, Grad-CAM 0.550, centred Gaussian 0.450" in section  # each map's own threshold
    for claim in ("research only", "NOT FOR CLINICAL USE", "case-clustered bootstrap (whole case groups resampled)",
                  "sampling of test cases only"):
        assert claim in section, claim


def test_lesion_map_figures_are_read_from_the_metrics_file_not_typed(tree):
    path = tree / "metrics" / "stratified" / "explain" / "metrics.json"
    explain = json.loads(path.read_text())
    explain["comparisons"]["lesion_map_vs_baseline"]["per_center"]["2"]["dice@val"] = _ci(-0.0417, -0.0833, -0.0104)
    explain["lesion_map"]["overall"]["pointing_game"] = _ci(0.6429, 0.5, 0.7857)
    _write(path, explain)
    section = _lesion_section(render_report_markdown(_data(tree)))
    assert "| all test | Pointing game hit rate | 0.643 (0.500–0.786) |" in section
    assert "| centre 2 | Dice at the validation-chosen threshold |" in section
    assert "-0.042 (-0.083 to -0.010)" in section and "0.812 (0.688–0.938)" not in section


def test_a_model_without_a_lesion_head_gets_one_line_and_keeps_its_grad_cam_text(tree):
    line = ("Lesion map: none, the model has no lesion head (`lesion_map` is null in "
            "`metrics/center/explain/metrics.json`); localisation is Grad-CAM only.")
    report, card = render_report_markdown(_data(tree)), render_model_card(_data(tree))
    for text in (report, card):
        assert text.count(line) == 1 and text.count(LESION_START) == 1  # only the stratified model has a map
    centre = report[report.index("#### Centre hold-out"):report.index("## Data audit")]
    assert "| Pointing game hit rate | 0.571 (0.446–0.696) | 0.312 (0.188–0.438) | model above baseline |" in centre
    assert line in centre and "Lesion map - Grad-CAM" not in centre


def test_explain_metrics_written_before_lesion_maps_say_so_and_render(tree):
    path = tree / "metrics" / "center" / "explain" / "metrics.json"
    explain = json.loads(path.read_text())
    for key in ("lesion_map", "lesion_val_threshold", "comparisons", "intervals", "baseline_val_threshold"):
        del explain[key]
    for block in ("model", "baseline"):
        explain[block] = {k: explain[block][k] for k in ("overall", "per_class")}
    _write(path, explain)
    for text in (render_report_markdown(_data(tree)), render_model_card(_data(tree))):
        assert ("Lesion map: not in `metrics/center/explain/metrics.json` (written before lesion maps were "
                "scored): run `dvc repro`.") in text
        assert "| Pointing game hit rate | 0.571 (0.446–0.696) |" in text  # its Grad-CAM figures still shown


def test_html_escapes_text_taken_from_metrics_files(tree):
    path = tree / "metrics" / "stratified" / "explain" / "metrics.json"
    explain = json.loads(path.read_text())
    explain["target_layer"] = "<img src=x onerror=alert(1)>"
    _write(path, explain)
    html = render_report_html(_data(tree))
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_the_code_licence_falls_back_to_pyproject_when_the_package_metadata_is_absent(tree, monkeypatch, caplog):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "metadata", absent)
    card = render_model_card(_data(tree))
    assert "**Licence**: package: see pyproject.toml. Data: BTXRD, CC BY-NC-ND 4.0" in card
    assert "assurexray is not installed" in caplog.text


def test_source_sample_is_flagged_as_synthetic_data(tree):
    params = copy.deepcopy(PARAMS)
    params["data"]["source"] = "sample"
    assert "built-in synthetic dataset" in render_report_markdown(_data(tree, params))
    assert "built-in synthetic dataset" not in render_report_markdown(_data(tree))


def test_html_embeds_the_figures_and_links_no_external_resource(tree):
    html = render_report_html(_data(tree))
    payloads = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    roc = (tree / "plots" / "stratified" / "eval" / "roc.png").read_bytes()
    assert [base64.b64decode(p) for p in payloads] == [roc]
    for external in ("http://", "https://", "<link", "<script", "url(", 'src="/', 'src="..'):
        assert external not in html
    assert '<div class="disclaimer" role="alert">' in html and "<table>" in html


def test_the_committed_markdown_names_figures_without_linking_to_dvc_tracked_files(tree):
    write_reports(_data(tree), tree / "reports")
    for name in ("report.md", "model_card.md"):
        text = (tree / "reports" / name).read_text(encoding="utf-8")
        assert not re.findall(r"\]\(([^)]+)\)|<img|src=", text), name  # report.md is in git, the PNGs only in DVC
    report = (tree / "reports" / "report.md").read_text(encoding="utf-8")
    assert ("*Figure: ROC curves, one-vs-rest (test)*: `plots/stratified/eval/roc.png` (tracked by DVC, not git: "
            "`dvc pull` or `dvc repro` fetches it; `report.html` embeds every figure).") in report
    assert "Precision-recall curves, one-vs-rest (test): not available (plots/stratified/eval/pr.png missing): " \
           "run `dvc repro`." in report


def _loss_files(root: Path, variant: str, val_last: float = 0.7) -> None:
    """DVCLive's loss files (step, loss) for one variant, as the train stage writes them."""
    for rel, last in (("train/loss.tsv", 0.4), ("val/loss.tsv", val_last)):
        path = root / "metrics" / variant / "train" / "plots" / "metrics" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"step\tloss\n0\t1.1\n1\t0.9\n2\t{last}\n", encoding="utf-8")


def test_the_html_report_draws_the_training_curves_from_dvclive_files(tree):
    _loss_files(tree, "stratified")
    html = render_report_html(_data(tree))
    charts = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="Training and validation loss per '
                        r'epoch: ([^"]+)">', html)
    assert [v for _, v in charts] == ["Stratified split"]  # drawn where the files exist
    with Image.open(io.BytesIO(base64.b64decode(charts[0][0]))) as png:
        assert png.format == "PNG" and png.width > 300
    assert ("Training and validation loss per epoch: Centre hold-out: not available "
            "(metrics/center/train/plots/metrics/train/loss.tsv or metrics/center/train/plots/metrics/val/loss.tsv "
            "missing)") in html
    report = render_report_markdown(_data(tree))
    assert ("*Figure: Training and validation loss per epoch: Stratified split*: drawn from "
            "`metrics/stratified/train/plots/metrics/train/loss.tsv` and "
            "`metrics/stratified/train/plots/metrics/val/loss.tsv` (in git); `report.html` embeds it.") in report
    assert render_report_html(_data(tree)) == html  # same files, same bytes
    _loss_files(tree, "stratified", val_last=0.2)
    assert render_report_html(_data(tree)) != html  # drawn from the data, not a fixed picture


def test_documents_are_identical_when_regenerated(tree):
    first = write_reports(_data(tree), tree / "a")
    second = write_reports(_data(tree), tree / "b")
    assert [p.read_bytes() for p in first.values()] == [p.read_bytes() for p in second.values()]
    assert sorted(p.name for p in (tree / "a").iterdir()) == ["model_card.md", "report.html", "report.md"]


# ------------------------------------------------------------------------------------- missing inputs


@pytest.mark.parametrize(("optional", "documents"), [
    ("center/explain/metrics.json", ["model_card.md", "report.md", "report.html"]),
    ("compare.json", ["model_card.md", "report.md", "report.html"]),
    ("audit.json", ["model_card.md", "report.md", "report.html"]),
    ("stratified/split.json", ["model_card.md", "report.md", "report.html"]),
    ("center/train/metrics.json", ["report.md", "report.html"]),
])
def test_a_missing_optional_file_gives_a_not_available_line_not_a_crash(tree, optional, documents):
    (tree / "metrics" / optional).unlink()
    write_reports(_data(tree), tree / "reports")
    for name in documents:
        text = (tree / "reports" / name).read_text(encoding="utf-8")
        assert re.search(rf"(not available|n/a) \(metrics/{re.escape(optional)} missing\)", text), name
        assert "run <code>dvc repro</code>" in text if name.endswith(".html") else "run `dvc repro`" in text


def test_missing_explain_metrics_leave_the_other_variant_localisation_in_place(tree):
    (tree / "metrics" / "center" / "explain" / "metrics.json").unlink()
    report = render_report_markdown(_data(tree))
    assert "Localisation metrics: not available (metrics/center/explain/metrics.json missing)" in report
    assert "| Pointing game hit rate | 0.714 (0.589–0.839) |" in report


@pytest.mark.parametrize("variant", ["stratified", "center"])
def test_missing_eval_metrics_fail_naming_the_file(tree, variant):
    path = tree / "metrics" / variant / "eval" / "metrics.json"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(path))}: evaluation metrics of variant "
                                                rf"'{variant}' not found.*dvc repro evaluate@{variant}"):
        _data(tree)


def test_eval_metrics_missing_schema_keys_fail_naming_the_keys(tree):
    path = tree / "metrics" / "center" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["calibration"], metrics["per_class"]
    _write(path, metrics)
    with pytest.raises(ValueError, match=r"metrics\.json: keys \['per_class', 'calibration'\] missing"):
        _data(tree)


def test_invalid_json_fails_naming_the_file(tree):
    path = tree / "metrics" / "compare.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"compare\.json: not valid JSON .*re-run the stage that writes it"):
        _data(tree)


def test_a_json_list_instead_of_an_object_fails_naming_the_file(tree):
    _write_list = tree / "metrics" / "audit.json"
    _write_list.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"audit\.json: expected a JSON object, got list"):
        _data(tree)


def test_variants_with_different_class_names_are_refused(tree):
    path = tree / "metrics" / "center" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["class_names"] = ["Normal", "Tumour"]
    _write(path, metrics)
    with pytest.raises(ValueError, match=r"class_names differ between variants.*re-run evaluate for both"):
        _data(tree)


@pytest.mark.parametrize(("params", "error", "match"), [
    ({**PARAMS, "split": {}}, ValueError, r"report params: unknown key\(s\) \['split'\]"),
    ({k: v for k, v in PARAMS.items() if k != "explain"}, ValueError, r"section\(s\) \['explain'\] missing"),
    ({**PARAMS, "data": {"source": "btxrd", "btxrd": {}}}, ValueError,
     r"report params section 'data': unknown key\(s\) \['btxrd'\]"),
])
def test_params_outside_the_tracked_keys_are_refused(tree, params, error, match):
    with pytest.raises(error, match=match):
        _data(tree, params)


def test_tracked_params_keeps_only_the_keys_dvc_tracks_and_names_a_missing_one():
    full = {**copy.deepcopy(PARAMS), "base": {"seed": 1}, "data": {"source": "sample", "sample": {"n_cases": 5}}}
    picked = tracked_params(full)
    assert picked["data"] == {"source": "sample"} and "base" not in picked and picked["train"] == PARAMS["train"]
    del full["prepare"]["image_px"]
    with pytest.raises(KeyError, match=r"prepare\.image_px missing; the report stage reads data\.source, prepare\.image_px"):
        tracked_params(full)


# ------------------------------------------------------------------------------------------------ stage


def test_the_stage_writes_the_three_documents_as_a_subprocess(tree, repo_root):
    full = {**copy.deepcopy(PARAMS), "base": {"seed": 42}}
    (tree / "params.yaml").write_text(yaml.safe_dump(full), encoding="utf-8")
    cmd = [sys.executable, str(repo_root / "stages" / "report.py"), "--metrics", "metrics", "--plots", "plots",
           "--params", "params.yaml", "--out", "reports"]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tree / "reports").iterdir()) == ["model_card.md", "report.html", "report.md"]
    assert "0.912 (0.871–0.948)" in (tree / "reports" / "report.md").read_text(encoding="utf-8")


def test_the_stage_fails_naming_missing_eval_metrics(tree, repo_root):
    (tree / "metrics" / "center" / "eval" / "metrics.json").unlink()
    cmd = [sys.executable, str(repo_root / "stages" / "report.py"), "--metrics", "metrics", "--plots", "plots",
           "--out", "reports"]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "metrics/center/eval/metrics.json: evaluation metrics of variant 'center' not found" in done.stderr
    assert not (tree / "reports").exists()


def test_the_adaptation_section_reads_each_centre_by_the_pre_registered_rule():
    """Adapted beside unadapted, every number from the eval metrics, and the reading from the paired interval."""
    from types import SimpleNamespace

    from assurexray.core.rendering import to_markdown
    from assurexray.publishing.report_sections import adaptation_section

    def auc(value, low, high):
        return {"headline": {"macro_auc": {"value": value, "ci_low": low, "ci_high": high}}}

    center = {"by_center": {"2": auc(0.741, 0.678, 0.806), "3": auc(0.545, 0.451, 0.637), "4": auc(0.6, 0.5, 0.7),
                            "5": auc(0.5, 0.4, 0.6)},
              "adapted": {"method": "bn", "by_center": {
                  "2": {**auc(0.775, 0.713, 0.832), "delta_macro_auc": {"value": 0.034, "ci_low": 0.007, "ci_high": 0.059},
                        "adaptation": {"n_images": 262}},
                  "3": {**auc(0.501, 0.42, 0.58), "delta_macro_auc": {"value": -0.044, "ci_low": -0.081, "ci_high": -0.012},
                        "adaptation": {"n_images": 126}},
                  "4": {**auc(0.61, 0.5, 0.7), "delta_macro_auc": {"value": 0.01, "ci_low": -0.02, "ci_high": 0.04},
                        "adaptation": {"n_images": 90}},
                  "5": {"skipped": "fewer than 32 test images", "adaptation": {"n_images": 12}}}}}
    text = to_markdown(adaptation_section(SimpleNamespace(evals={"stratified": {"by_center": {}}, "center": center})))
    assert "| 2 | 262 | 0.741 (0.678–0.806) | 0.775 (0.713–0.832) | 0.034 (0.007 to 0.059) | adaptation helped |" in text
    assert "| 3 | 126 | 0.545 (0.451–0.637) | 0.501 (0.420–0.580) | -0.044 (-0.081 to -0.012) | adaptation hurt |" in text
    assert "no difference measurable at this sample size" in text and "fewer than 32 test images" in text
    assert "no label read" in text and "stay the result" in text
    plain = to_markdown(adaptation_section(SimpleNamespace(evals={"stratified": {}, "center": {"by_center": {}}})))
    assert "not run" in plain and "|" not in plain


# ------------------------------------------------------------------ one way to write each thing (issue 34)


def test_a_synthetic_run_does_not_give_btxrd_s_licence_as_its_data_licence(tree):
    sample = copy.deepcopy(PARAMS)
    sample["data"]["source"] = "sample"
    code_licence = importlib.metadata.metadata("assurexray")["License"]  # the package's own, which names BTXRD's
    for render in (render_model_card, render_report_markdown):
        synthetic, real = (render(_data(tree, p)).replace(code_licence, "") for p in (sample, PARAMS))
        assert DATASET_LICENSE not in synthetic and DATASET_LICENSE in real
        assert "this run used the built-in synthetic sample" in synthetic
        assert "this run used the built-in synthetic sample" not in real
    report = render_report_markdown(_data(tree, sample))
    assert "- Data licence: none: this run used the built-in synthetic sample (`data.source: sample`)" in report
    assert f"Citation of BTXRD, the dataset the pipeline is built for (not used in this run): {DATASET_CITATION}" \
           in report


def test_an_interval_with_negative_bounds_reads_to_never_a_dash_before_a_minus(tree):
    path = tree / "metrics" / "compare.json"
    compare = json.loads(path.read_text())
    compare["headline"]["macro_auc"]["gap"] = _ci(-0.2371, -0.3372, -0.1381)
    _write(path, compare)
    documents = {"card": render_model_card(_data(tree)), "report": render_report_markdown(_data(tree)),
                 "html": render_report_html(_data(tree))}
    for name, text in documents.items():
        assert "gap -0.237 (-0.337 to -0.138); the model is measurably better" in text, name
        assert not re.search(r"\d–-\d", text), (name, re.search(r".{40}\d–-\d.{20}", text))
        assert not re.search(r"\(-\d\.\d+–", text), name  # a negative lower bound is always followed by "to"


def test_prose_spells_centre_the_british_way_keys_and_paths_aside(tree):
    for text in (render_model_card(_data(tree)), render_report_markdown(_data(tree))):
        # code spans and file paths keep the key "center"; "Gap interval:" quotes compare.json's gap_method verbatim
        prose = re.sub(r"`[^`]*`|\S*/\S*|^Gap interval: .*$", "", text, flags=re.M)
        assert not re.search(r"\bcenters?\b", prose, flags=re.I), re.search(r".{40}\bcenters?\b.{40}", prose)
        assert re.search(r"\bcentres?\b", prose)


def test_each_malignant_sensitivity_says_which_rule_gave_it(tree):
    report = render_report_markdown(_data(tree))
    for text in (render_model_card(_data(tree)), report):
        headline = text[text.index("| Metric |"):]
        table, after = headline.split("\n\n", 1)
        assert "| Malignant sensitivity (argmax) |" in table
        assert after.startswith("Two Malignant sensitivities appear in this document. \"(argmax)\": an image counts "
                                "as flagged when Malignant is its most probable class.")
    summary = _section(report, "## Summary")
    assert summary.count("Malignant sensitivity at the operating point (threshold chosen on validation, not the "
                         "argmax rule) ") == 2


def test_the_per_centre_table_marks_each_sensitivity_of_an_unreliable_threshold_in_its_cell(tree):
    rows = [line for line in _section(render_report_markdown(_data(tree)), "### Per centre (test)").splitlines()
            if line.startswith("| Centre hold-out") or line.startswith("| Stratified split")]
    centre = [r for r in rows if r.startswith("| Centre hold-out")]
    stratified = [r for r in rows if r.startswith("| Stratified split")]
    assert centre and stratified
    for row in centre:  # the centre hold-out's threshold rests on 5 validation Malignant images
        assert row.count("(UNRELIABLE threshold, note below)") == 2, row
    for row in stratified:
        assert "UNRELIABLE" not in row, row


def test_epochs_are_counted_from_one_in_the_training_table(tree):
    report = render_report_markdown(_data(tree))
    assert "| Variant | Epochs run | Best epoch (1 = first) | Monitor | Best validation score |" in report
    assert "| Stratified split | 7 | 4 | macro_auc | 0.884 |" in report  # best_epoch as train metrics.json has it
