"""Headline metrics: a dozen numbers per variant, copied from the metrics files, identical keys across variants."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from assurexray.assessment.headline import HEADLINE_KEYS, headline_metrics, headlines, leaf_count, load_variant_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]


def ci(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def eval_metrics(auc=0.81, *, by_center=None, n_test=40):
    """An evaluate-stage metrics dict (docs/ARCHITECTURE.md schema), only the parts the headline reads + noise."""
    metrics = {
        "n_test": n_test, "n_val": 20, "class_names": ["Normal", "Benign", "Malignant"],
        "headline": {"macro_auc": ci(auc, auc - 0.1, auc + 0.05), "accuracy": ci(0.7, 0.6, 0.8)},
        "per_class": {"Malignant": {"auc": ci(0.9, 0.8, 1.0)}},
        "calibration": {"temperature": 1.5, "ece_before": 0.12, "ece_after": 0.04, "bins": 10},
        "operating_point": {"class": "Malignant", "threshold": 0.2, "target_sensitivity": 0.9, "val_sensitivity": 0.93,
                            "test_sensitivity": ci(0.875, 0.7, 1.0), "test_specificity": ci(0.625, 0.5, 0.75)},
        "bootstrap": {"resamples": 50, "ci_level": 0.95},
    }
    if by_center is not None:
        metrics["by_center"] = {c: {"n": 10, "counts": {"Normal": 4, "Benign": 3, "Malignant": 3},
                                    "headline": {"macro_auc": ci(v, v - 0.2, v + 0.1), "accuracy": ci(0.5, 0.4, 0.6)}}
                                for c, v in by_center.items()}
    return metrics


EXPLAIN = {"method": "gradcam",
           "model": {"overall": {"pointing_game": ci(0.44, 0.3, 0.58), "dice@val": ci(0.21, 0.15, 0.27), "n": 52}},
           "baseline": {"overall": {"pointing_game": ci(0.1, 0.02, 0.19), "dice@val": ci(0.08, 0.05, 0.11), "n": 52}},
           "lesion_map": None}  # a model without a lesion head
#: The same file for a model with a lesion head (explain.explain_variant's shape, the parts the headline reads).
LESION_EXPLAIN = EXPLAIN | {
    "lesion_map": {"overall": {"pointing_game": ci(0.83, 0.74, 0.9), "dice@val": ci(0.57, 0.5, 0.63), "n": 52}},
    "comparisons": {"lesion_map_vs_gradcam": {"overall": {"dice@val": ci(0.36, 0.28, 0.44), "n": 52}}},
}
TRAIN = {"train": {"loss": 0.2}, "val": {"loss": 0.6, "macro_auc": 0.9}, "best_epoch": 7, "epochs_run": 11}


def test_every_headline_number_is_copied_from_the_metrics_files():
    head = headline_metrics(eval_metrics(by_center={"2": 0.7, "1": 0.95}), explain_metrics=LESION_EXPLAIN,
                            train_metrics=TRAIN)
    assert list(head) == list(HEADLINE_KEYS)
    assert head == {
        "n_test": 40,
        "macro_auc": {"value": 0.81, "ci_low": 0.81 - 0.1, "ci_high": 0.81 + 0.05},
        "malignant_sensitivity_at_threshold": 0.875,  # at the operating point, not the argmax sensitivity
        "malignant_specificity_at_threshold": 0.625,
        "ece_calibrated": 0.04,
        "pointing_game": {"model": 0.44, "baseline": 0.1, "lesion_map": 0.83},
        "lesion_dice": {"lesion_map": 0.57, "gradcam": 0.21},  # each map's own dice@val, not their difference
        "epochs_trained": 11,
        "best_epoch": 7,
        "macro_auc_by_center": {"1": 0.95, "2": 0.7},
    }


def test_a_headline_file_stays_small_enough_for_a_terminal():
    head = headline_metrics(eval_metrics(by_center={"1": 0.9, "2": 0.8, "3": 0.7}), explain_metrics=LESION_EXPLAIN,
                            train_metrics=TRAIN)
    assert leaf_count(head) == 17  # 14 numbers + 3 centres: columns it adds to `dvc exp show` per variant
    assert len(json.dumps(head)) < 600
    assert leaf_count(eval_metrics(by_center={"1": 0.9, "2": 0.8, "3": 0.7})) > 3 * leaf_count(head)


def test_variants_get_identical_keys_even_when_their_test_centres_differ():
    variants = {
        "stratified": {"eval": eval_metrics(by_center={"1": 0.9, "2": 0.8, "10": 0.6}), "explain": EXPLAIN,
                       "train": TRAIN},
        "center": {"eval": eval_metrics(0.7, by_center={"2": 0.65, "3": 0.5}), "explain": EXPLAIN, "train": TRAIN},
    }
    result = headlines(variants)
    assert json.dumps(list(result["stratified"])) == json.dumps(list(result["center"]))
    assert result["stratified"]["macro_auc_by_center"] == {"1": 0.9, "2": 0.8, "3": None, "10": 0.6}
    assert result["center"]["macro_auc_by_center"] == {"1": None, "2": 0.65, "3": 0.5, "10": None}


def test_without_per_centre_results_or_explain_and_train_metrics_the_keys_stay_the_same():
    result = headlines({"stratified": {"eval": eval_metrics(), "explain": None, "train": None},
                        "center": {"eval": eval_metrics(by_center={}), "explain": EXPLAIN, "train": TRAIN}})
    assert list(result["stratified"]) == list(result["center"]) == list(HEADLINE_KEYS)
    assert result["stratified"]["macro_auc_by_center"] == {} == result["center"]["macro_auc_by_center"]
    assert result["stratified"]["pointing_game"] == {"model": None, "baseline": None, "lesion_map": None}
    assert result["stratified"]["lesion_dice"] == {"lesion_map": None, "gradcam": None}
    assert result["stratified"]["epochs_trained"] is None and result["center"]["epochs_trained"] == 11


def test_a_variant_without_a_lesion_head_keeps_the_lesion_keys_as_null():
    old_file = {k: v for k, v in EXPLAIN.items() if k != "lesion_map"}  # written before lesion maps were scored
    result = headlines({"stratified": {"eval": eval_metrics(), "explain": LESION_EXPLAIN, "train": TRAIN},
                        "center": {"eval": eval_metrics(0.7), "explain": EXPLAIN, "train": TRAIN}})
    assert json.dumps(list(result["stratified"])) == json.dumps(list(result["center"]))
    assert result["stratified"]["pointing_game"] == {"model": 0.44, "baseline": 0.1, "lesion_map": 0.83}
    assert result["center"]["pointing_game"] == {"model": 0.44, "baseline": 0.1, "lesion_map": None}
    assert result["center"]["lesion_dice"] == {"lesion_map": None, "gradcam": 0.21}
    assert headline_metrics(eval_metrics(), explain_metrics=old_file)["lesion_dice"] == result["center"]["lesion_dice"]


def test_a_lesion_map_missing_its_dice_is_refused_naming_the_key():
    broken = copy.deepcopy(LESION_EXPLAIN)
    del broken["lesion_map"]["overall"]["dice@val"]
    with pytest.raises(ValueError, match=r"explain metrics.json lesion_map: key 'overall.dice@val' missing"):
        headline_metrics(eval_metrics(), explain_metrics=broken)


def test_an_eval_file_missing_a_key_is_refused_naming_the_key():
    broken = eval_metrics()
    del broken["calibration"]["ece_after"]
    with pytest.raises(ValueError, match=r"eval metrics.json: key 'calibration.ece_after' missing"):
        headline_metrics(broken)


def _write_variant(root: Path, metrics: dict, *, explain=EXPLAIN, train=TRAIN) -> Path:
    for sub, data in (("eval", metrics), ("explain", explain), ("train", train)):
        if data is not None:
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / "metrics.json").write_text(json.dumps(data))
    return root


def test_missing_eval_metrics_fail_naming_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eval/metrics.json: evaluation metrics not found; .*dvc repro"):
        load_variant_metrics(tmp_path / "metrics" / "center")
    loaded = load_variant_metrics(_write_variant(tmp_path / "v", eval_metrics(), explain=None))
    assert loaded["explain"] is None and loaded["train"] == TRAIN


def _run_stage(tmp_path: Path, variant: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"headline": {"variant": variant}}))
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "headline.py"),
         "--stratified", "metrics/stratified", "--stratified-out", "metrics/stratified/headline.json",
         "--center", "metrics/center", "--center-out", "metrics/center/headline.json",
         "--selected-out", "metrics/headline.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_stage_writes_both_variants_and_a_copy_of_the_selected_one(tmp_path):
    _write_variant(tmp_path / "metrics" / "stratified", eval_metrics(0.9, by_center={"1": 0.9, "2": 0.8}))
    _write_variant(tmp_path / "metrics" / "center", eval_metrics(0.7, by_center={"2": 0.6}))
    done = _run_stage(tmp_path, "center")
    assert done.returncode == 0, done.stderr
    files = {name: json.loads((tmp_path / "metrics" / name).read_text())
             for name in ("stratified/headline.json", "center/headline.json", "headline.json")}
    assert files["headline.json"] == files["center/headline.json"]
    assert files["stratified/headline.json"]["macro_auc"]["value"] == 0.9
    assert files["center/headline.json"]["macro_auc_by_center"] == {"1": None, "2": 0.6}
    bad = _run_stage(tmp_path, "centre")
    assert bad.returncode != 0
    assert "headline.variant: 'centre' is not a variant; use one of ['center', 'stratified']." in bad.stderr
