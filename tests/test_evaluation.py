"""Tests for assurexray.assessment.evaluation and stages/evaluate.py: logits-level logic and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from assurexray.assessment.evaluation import EvaluateConfig, evaluate_logits, load_partition
from assurexray.assessment.metrics import HEADLINE_METRICS, PER_CLASS_METRICS
from assurexray.learning.model import backbone_norm, create_model, file_sha256, load_checkpoint, save_checkpoint

NAMES = ["Normal", "Benign", "Malignant"]
PRED_COLUMNS = ["row", "image_id", "partition", "label", "label_idx", "prob_Normal", "prob_Benign",
                "prob_Malignant", "pred_idx", "pred", "malignant_flag", "group", "center"]
EVAL_PARAMS = {"bootstrap_resamples": 50, "bootstrap_cluster": False, "ci_level": 0.95, "calibration_bins": 5,
               "malignant_target_sensitivity": 0.8, "bootstrap_seed": 0, "batch_size": 8, "tta_flip": False}


def _frame(labels: np.ndarray, offset: int = 0) -> pd.DataFrame:
    n = labels.size
    return pd.DataFrame({
        "row": np.arange(offset, offset + n), "image_id": [f"IMG{i:06d}.jpeg" for i in range(offset, offset + n)],
        "label": np.asarray(NAMES, dtype=object)[labels], "label_idx": labels,
        "center": 1 + np.arange(n) % 2, "group": [f"g{(offset + i) // 2}" for i in range(n)],
    })


def _config(**overrides) -> EvaluateConfig:
    """The evaluate section as the stage loads it: EVAL_PARAMS with ``overrides`` (params.yaml key names)."""
    return EvaluateConfig(**{**EVAL_PARAMS, **overrides})


#: The settings most logits-level tests use: 200 resamples, 10 calibration bins, target sensitivity 0.9.
CONFIG = _config(bootstrap_resamples=200, calibration_bins=10, malignant_target_sensitivity=0.9)


def _logits(labels: np.ndarray, seed: int, scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return scale * (rng.normal(size=(labels.size, 3)) + 1.5 * np.eye(3)[labels])  # over-confident on purpose


def _evaluate(cluster: bool = False):
    y_val, y_test = np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 30)
    return evaluate_logits(
        replace(CONFIG, bootstrap_cluster=cluster), val_frame=_frame(y_val), val_logits=_logits(y_val, 0),
        test_frame=_frame(y_test, 60), test_logits=_logits(y_test, 1), class_names=NAMES, model_sha256="abc",
    )


def test_metrics_follow_the_schema_with_ranges_and_bracketing_cis():
    m = _evaluate().metrics
    assert (m["n_test"], m["n_val"], m["class_names"]) == (90, 60, NAMES)
    assert list(m["headline"]) == list(HEADLINE_METRICS)
    cis = list(m["headline"].values()) + [m["per_class"][c][k] for c in NAMES for k in PER_CLASS_METRICS]
    cis += [m["operating_point"]["test_sensitivity"], m["operating_point"]["test_specificity"]]
    for ci in cis:
        assert {"value", "ci_low", "ci_high"} <= set(ci) <= {"value", "ci_low", "ci_high", "n", "interval"}
        assert 0.0 <= ci["ci_low"] <= ci["value"] <= ci["ci_high"] <= 1.0
    # 20+ images in every denominator here: proportions keep their bootstrap interval.
    assert m["per_class"]["Malignant"]["sensitivity"]["interval"] == "bootstrap"
    assert [m["per_class"][c]["support"] for c in NAMES] == [30, 30, 30]
    assert np.sum(m["confusion"]["counts"]) == 90
    assert set(m["calibration"]) == {"temperature", "ece_before", "ece_after", "bins"}
    assert m["calibration"]["temperature"] > 1.0  # the logits were scaled up, so T must soften them
    assert m["calibration"]["ece_after"] < m["calibration"]["ece_before"]
    assert {"resamples", "ci_level", "cluster"} <= set(m["bootstrap"]) and "seconds" not in m["bootstrap"]
    json.dumps(m, allow_nan=False)  # DVC cannot read NaN


def test_operating_point_is_fitted_on_val_and_flags_match_it():
    ev = _evaluate()
    op, preds = ev.operating_point, ev.predictions
    val = preds[preds.partition == "val"]
    malignant_val = val[val.label == "Malignant"]
    assert op["val_sensitivity"] >= 0.9
    assert op["val_sensitivity"] == pytest.approx((malignant_val.prob_Malignant >= op["malignant_threshold"]).mean())
    np.testing.assert_array_equal(preds.malignant_flag, (preds.prob_Malignant >= op["malignant_threshold"]).astype(int))
    assert ev.metrics["operating_point"]["threshold"] == op["malignant_threshold"]
    assert set(op) == {"temperature", "malignant_threshold", "target_sensitivity", "val_sensitivity", "model_sha256",
                       "val_positives", "rule", "reliable", "reason"}


def test_predictions_follow_the_contract_columns_and_probabilities_sum_to_one():
    preds = _evaluate().predictions
    assert list(preds.columns) == PRED_COLUMNS
    assert preds.partition.value_counts().to_dict() == {"test": 90, "val": 60}
    np.testing.assert_allclose(preds[["prob_Normal", "prob_Benign", "prob_Malignant"]].sum(axis=1), 1.0)
    assert (preds.pred == np.asarray(NAMES, dtype=object)[preds.pred_idx]).all()


def test_plot_records_cover_every_class_and_one_confusion_row_per_test_image():
    ev = _evaluate()
    assert {r["class"] for r in ev.roc} == set(NAMES) == {r["class"] for r in ev.pr}
    assert len(ev.confusion) == 90 and set(ev.confusion[0]) == {"actual", "predicted"}


def test_evaluation_is_deterministic():
    a, b = _evaluate().metrics, _evaluate().metrics
    assert a == b


def _copied_views(frame: pd.DataFrame, logits: np.ndarray, copies: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Each image repeated ``copies`` times in its own group: views of one case that add no information."""
    views = frame.loc[frame.index.repeat(copies)].reset_index(drop=True)
    views["row"] = np.arange(len(views))
    views["image_id"] = [f"{image}-view{k}" for image, k in zip(views["image_id"], np.tile(range(copies), len(frame)))]
    return views, np.repeat(logits, copies, axis=0)


def test_cluster_bootstrap_intervals_of_copied_views_are_as_wide_as_the_cases_alone():
    """Four identical views per case hold no more evidence than the cases: clustered, every interval (pooled
    and per centre) equals that of the cases alone; an image-level resample would shrink it by about half."""
    y_val, y_test = np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 30)
    cases = _frame(y_test, 60).assign(group=[f"case{i:03d}" for i in range(y_test.size)])  # one image per case
    views, view_logits = _copied_views(cases, _logits(y_test, 1), copies=4)
    kwargs = dict(val_frame=_frame(y_val), val_logits=_logits(y_val, 0), class_names=NAMES, model_sha256="abc")
    cluster, images = replace(CONFIG, bootstrap_cluster=True), replace(CONFIG, bootstrap_cluster=False)
    alone = evaluate_logits(cluster, test_frame=cases, test_logits=_logits(y_test, 1), **kwargs).metrics
    clustered = evaluate_logits(cluster, test_frame=views, test_logits=view_logits, **kwargs).metrics
    by_image = evaluate_logits(images, test_frame=views, test_logits=view_logits, **kwargs).metrics
    assert clustered["bootstrap"]["cluster"] is True and clustered["n_test"] == 4 * alone["n_test"] == 360

    def blocks(m: dict) -> dict:
        return {"pooled": m["headline"], **{f"centre {c}": m["by_center"][c]["headline"] for c in ("1", "2")}}

    width = lambda ci: ci["ci_high"] - ci["ci_low"]  # noqa: E731
    for where, got in blocks(clustered).items():
        for name in ("macro_auc", "macro_ap", "accuracy", "balanced_accuracy", "macro_f1"):  # bootstrap intervals
            want, narrow = blocks(alone)[where][name], blocks(by_image)[where][name]
            assert (got[name]["ci_low"], got[name]["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"])), \
                (where, name)
            assert width(got[name]) > 1.5 * width(narrow), (where, name)


def test_a_test_set_without_normal_images_is_scored_over_the_classes_present(tmp_path):
    # The centre holdout on BTXRD may hold tumours only: macro metrics must stay defined, files valid JSON.
    from assurexray.assessment.evaluation import write_evaluation

    y_val, y_test = np.repeat([0, 1, 2], 20), np.repeat([1, 2], 30)
    ev = evaluate_logits(
        replace(CONFIG, bootstrap_resamples=100), val_frame=_frame(y_val), val_logits=_logits(y_val, 0),
        test_frame=_frame(y_test, 60), test_logits=_logits(y_test, 1), class_names=NAMES, model_sha256="abc",
    )
    headline = ev.metrics["headline"]
    assert all(headline[m]["value"] is not None for m in HEADLINE_METRICS)
    assert ev.metrics["per_class"]["Normal"]["auc"]["value"] is None
    assert ev.metrics["per_class"]["Normal"]["support"] == 0
    present = [ev.metrics["per_class"][c]["auc"]["value"] for c in ("Benign", "Malignant")]
    assert headline["macro_auc"]["value"] == pytest.approx(np.mean(present))
    write_evaluation(ev, out_dir=tmp_path / "eval", figures_dir=tmp_path / "plots")
    for name in ("metrics.json", "roc.json", "pr.json", "confusion.json", "operating_point.json"):
        text = (tmp_path / "eval" / name).read_text()
        json.loads(text)
        assert "NaN" not in text and "Infinity" not in text, name  # DVC reads strict JSON


def test_label_names_disagreeing_with_the_class_order_are_rejected():
    y = np.repeat([0, 1, 2], 4)
    frame = _frame(y)
    frame.loc[3, "label"] = "Malignant"
    with pytest.raises(ValueError, match=r"val.csv row 3: label 'Malignant' / label_idx 0 disagree"):
        evaluate_logits(_config(bootstrap_resamples=5), val_frame=frame, val_logits=_logits(y, 0),
                        test_frame=_frame(y), test_logits=_logits(y, 1), class_names=NAMES, model_sha256="x")


# --- end to end on a tiny prepared cache and a tiny timm checkpoint --------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1, 2], 10)  # 30 images: 0-14 val, 15-29 test
    images = rng.integers(0, 40, size=(30, 32, 32), dtype=np.uint8)
    for i, lab in enumerate(labels):  # brightness carries the class so the model output is not constant
        images[i, 8:24, 8:24] += np.uint8(60 * lab)
    (root / "prepared").mkdir()
    np.save(root / "prepared" / "images.npy", images)
    (root / "split").mkdir()
    _frame(labels[:15]).to_csv(root / "split" / "val.csv", index=False)
    _frame(labels[15:], 15).to_csv(root / "split" / "test.csv", index=False)
    torch.manual_seed(0)
    model = create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none")
    mean, std = backbone_norm(model)
    meta = {"backbone": "test_efficientnet", "num_classes": 3, "class_names": NAMES, "dropout": 0.0,
            "input_size": 32, "in_chans": 3, "mean": mean, "std": std, "clahe": False, "letterbox_fill": 0,
            "params": {}, "best_epoch": 0, "monitor": "macro_auc", "best_score": 0.5, "seed": 0, "format_version": 1}
    save_checkpoint(root / "model.pt", model, meta)
    (root / "params.yaml").write_text(yaml.safe_dump({"evaluate": EVAL_PARAMS, "train": {"device": "auto"}}))
    return root


def _run_stage(root: Path, out: str, params: str = "params.yaml") -> int:
    return _stage().main([
        "--prepared", str(root / "prepared"), "--split", str(root / "split"), "--model", str(root / "model.pt"),
        "--out", str(root / out / "eval"), "--figures", str(root / out / "plots"), "--params", str(root / params),
    ])


def _stage():
    path = Path(__file__).parents[1] / "stages" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_stage", path)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_the_stage_writes_every_output_and_reruns_identically(tiny_run):
    assert _run_stage(tiny_run, "a") == 0 and _run_stage(tiny_run, "b") == 0
    out = tiny_run / "a" / "eval"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_val"], m["n_test"], m["bootstrap"]["resamples"]) == (15, 15, 50)
    for ci in m["headline"].values():
        if ci["value"] is not None:
            assert 0.0 <= ci["value"] <= 1.0
    op = json.loads((out / "operating_point.json").read_text())
    assert op["model_sha256"] == file_sha256(tiny_run / "model.pt")
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == PRED_COLUMNS and len(preds) == 30
    assert {r["class"] for r in json.loads((out / "roc.json").read_text())["roc"]} == set(NAMES)
    assert set(json.loads((out / "pr.json").read_text())) == {"pr"}
    assert len(json.loads((out / "confusion.json").read_text())) == 15
    pngs = sorted(p.name for p in (tiny_run / "a" / "plots" / "eval").iterdir())
    assert pngs == ["confusion.png", "pr.png", "reliability.png", "roc.png"]
    other = json.loads((tiny_run / "b" / "eval" / "metrics.json").read_text())
    assert m == other
    assert (out / "predictions.csv").read_bytes() == (tiny_run / "b" / "eval" / "predictions.csv").read_bytes()


def test_the_stage_evaluates_a_seed_ensemble_given_model_twice(tiny_run, tmp_path):
    from assurexray.learning.prediction import ensemble_sha256

    torch.manual_seed(1)
    other = create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none")
    _, meta = load_checkpoint(tiny_run / "model.pt")
    second = save_checkpoint(tmp_path / "seed1" / "model.pt", other, meta)
    assert _stage().main([
        "--prepared", str(tiny_run / "prepared"), "--split", str(tiny_run / "split"), "--model",
        str(tiny_run / "model.pt"), "--model", str(second), "--out", str(tmp_path / "eval"),
        "--figures", str(tmp_path / "plots"), "--params", str(tiny_run / "params.yaml")]) == 0
    op = json.loads((tmp_path / "eval" / "operating_point.json").read_text())
    members = [file_sha256(tiny_run / "model.pt"), file_sha256(second)]
    assert op["member_sha256s"] == members and op["model_sha256"] == ensemble_sha256(members)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["ensemble_size"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_the_stage_runs_where_train_device_says(tiny_run):
    """evaluate reads train.device (auto here = CPU): asking for CUDA on a CPU-only machine is refused by name."""
    (tiny_run / "cuda.yaml").write_text(yaml.safe_dump({"evaluate": EVAL_PARAMS, "train": {"device": "cuda"}}))
    with pytest.raises(ValueError, match=r"train\.device='cuda': CUDA is not available"):
        _run_stage(tiny_run, "c", params="cuda.yaml")
    (tiny_run / "nodevice.yaml").write_text(yaml.safe_dump({"evaluate": EVAL_PARAMS, "train": {}}))
    with pytest.raises(ValueError, match=r"train\.device is missing"):
        _run_stage(tiny_run, "d", params="nodevice.yaml")


def test_a_checkpoint_of_another_input_size_is_rejected(tiny_run, tmp_path):
    (tiny_run / "small").mkdir(exist_ok=True)
    np.save(tiny_run / "small" / "images.npy", np.zeros((30, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"checkpoint expects input_size 32"):
        _stage().main(["--prepared", str(tiny_run / "small"), "--split", str(tiny_run / "split"), "--model",
                    str(tiny_run / "model.pt"), "--out", str(tmp_path / "o"), "--figures", str(tmp_path / "f"),
                    "--params", str(tiny_run / "params.yaml")])


@pytest.mark.parametrize(
    ("params", "match"),
    [({**EVAL_PARAMS, "bootstrap_sead": 1}, r"unknown key\(s\) \['bootstrap_sead'\]"),
     ({k: v for k, v in EVAL_PARAMS.items() if k != "batch_size"}, r"missing key\(s\) \['batch_size'\]")],
)
def test_bad_evaluate_params_are_named(tiny_run, params, match):
    (tiny_run / "bad.yaml").write_text(yaml.safe_dump({"evaluate": params}))
    with pytest.raises(ValueError, match=match):
        _run_stage(tiny_run, "bad", params="bad.yaml")


def test_load_partition_names_missing_files_columns_and_bad_rows(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match=r"val.csv: not found"):
        load_partition(tmp_path, tmp_path, "val")
    _frame(np.array([0, 1])).drop(columns="group").to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['group'\]"):
        load_partition(tmp_path, tmp_path, "val")
    _frame(np.array([0, 1]), offset=3).to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(ValueError, match=r"val.csv line 3: row 4 is outside"):
        load_partition(tmp_path, tmp_path, "val")
    _frame(np.array([0, 1]), offset=2).to_csv(tmp_path / "val.csv", index=False)
    frame, images = load_partition(tmp_path, tmp_path, "val")
    assert len(frame) == 2 and images.shape == (2, 8, 8)


def test_test_metrics_are_reported_per_centre_with_their_own_counts():
    m = _evaluate(cluster=True).metrics
    assert sorted(m["by_center"]) == ["1", "2"]  # _frame alternates centres 1 and 2
    assert sum(c["n"] for c in m["by_center"].values()) == m["n_test"]
    for center in m["by_center"].values():
        assert sum(center["counts"].values()) == center["n"]
        assert center["classes_present"] == NAMES
        auc = center["headline"]["macro_auc"]
        assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0
    assert {"tumour_vs_normal_auc", "benign_vs_malignant_auc"} <= set(m["diagnostics"])


def _malignant_val(n_malignant: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Validation with 20 Normal and 20 Benign images (noisy logits) and ``n_malignant`` Malignant images whose
    calibrated P(Malignant) lies near 0.99 (so a plain fit of a 0.9 target sits near 0.99, as on the centre split)."""
    y = np.array([0] * 20 + [1] * 20 + [2] * n_malignant)
    logits = _logits(y, 0, scale=1.0)
    logits[y == 2] = 0.0
    logits[y == 2, 2] = 3.1 + np.linspace(0.0, 0.6, n_malignant)
    return _frame(y), logits


def test_a_threshold_fitted_on_5_validation_malignant_images_still_flags_every_image_whose_top_class_is_malignant():
    """The centre model's case: 5 validation Malignant images put a plainly fitted 0.9-sensitivity threshold near
    0.99, so a test image with Malignant on top at P = 0.97 went unflagged. The flag may never be less sensitive
    than the argmax, and the threshold is marked unreliable with its reason."""
    val_frame, val_logits = _malignant_val(5)
    y_test = np.repeat([0, 1, 2], 30)
    # Malignant on top at every strength from a near-tie (P ~ 0.35) to a sure call (P ~ 1), for every class.
    strength = np.tile(np.linspace(0.05, 5.5, 30), 3)
    test_logits = np.stack([np.zeros(90), np.zeros(90), strength], axis=1)
    ev = evaluate_logits(_config(malignant_target_sensitivity=0.9), val_frame=val_frame, val_logits=val_logits,
                         test_frame=_frame(y_test, 60), test_logits=test_logits, class_names=NAMES,
                         model_sha256="abc")
    op, preds = ev.metrics["operating_point"], ev.predictions
    assert 0.98 < op["fitted_threshold"] < 0.99  # what a plain fit gives: above most test images' P(Malignant)
    top_malignant = preds[preds.pred == "Malignant"]
    test_top = top_malignant[top_malignant.partition == "test"]
    assert len(test_top) == 90 and (test_top.prob_Malignant < op["fitted_threshold"]).sum() >= 45
    assert test_top.prob_Malignant.min() < 0.4
    assert (top_malignant.malignant_flag == 1).all()
    assert ev.operating_point["malignant_threshold"] == op["threshold"] <= 1 / 3
    assert op["test_sensitivity"]["value"] == 1.0  # every Malignant test image has Malignant on top
    assert (op["reliable"], op["val_positives"], op["rule"]) == (False, 5, "capped_point_estimate")
    assert re.search(r"chosen on 5 validation Malignant image\(s\), fewer than the 29 needed", op["reason"])
    assert ev.operating_point["reliable"] is False and ev.operating_point["reason"] == op["reason"]


def test_a_threshold_is_reliable_only_with_enough_validation_malignant_images_for_its_lower_bound():
    """0.9 sensitivity at 95% needs >= 29 positives (0.05 ** (1/29) >= 0.9); 40 are enough, 20 are not."""
    y_test = np.repeat([0, 1, 2], 30)
    ops = {}
    for n in (20, 40):
        val_frame, val_logits = _malignant_val(n)
        ops[n] = evaluate_logits(_config(malignant_target_sensitivity=0.9), val_frame=val_frame,
                                 val_logits=val_logits, test_frame=_frame(y_test, 60),
                                 test_logits=_logits(y_test, 1), class_names=NAMES,
                                 model_sha256="abc").metrics["operating_point"]
    assert (ops[20]["reliable"], ops[20]["min_val_positives"]) == (False, 29) and ops[20]["reason"]
    assert (ops[40]["reliable"], ops[40]["rule"], ops[40]["reason"]) == (True, "sensitivity_lower_bound", None)
    assert ops[40]["val_sensitivity_lower_bound"] >= 0.9 and ops[40]["threshold"] <= ops[40]["fitted_threshold"]


def test_temperature_and_threshold_are_fitted_on_validation_only():
    """Perturb only the test partition (logits shuffled and rescaled): nothing fitted may move."""
    y_val, y_test = np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 30)
    kwargs = dict(val_frame=_frame(y_val), val_logits=_logits(y_val, 0), test_frame=_frame(y_test, 60),
                  class_names=NAMES, model_sha256="abc")
    config = _config(bootstrap_resamples=50, calibration_bins=10, malignant_target_sensitivity=0.9)
    base = evaluate_logits(config, test_logits=_logits(y_test, 1), **kwargs)
    rng = np.random.default_rng(5)
    scrambled = 4.0 * rng.permutation(_logits(y_test, 2))
    moved = evaluate_logits(config, test_logits=scrambled, **kwargs)
    assert moved.operating_point == base.operating_point  # temperature, threshold, val sensitivity
    assert moved.metrics["calibration"]["temperature"] == base.metrics["calibration"]["temperature"]
    val = lambda ev: ev.predictions[ev.predictions.partition == "val"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(val(moved), val(base))
    assert moved.metrics["headline"] != base.metrics["headline"]  # the perturbation did reach the test figures


def test_every_figure_title_names_the_variant_and_reliability_points_carry_their_counts(tmp_path, monkeypatch):
    import assurexray.assessment.evaluation as evaluation_lib
    from assurexray.assessment.evaluation import write_evaluation

    y = np.repeat([0, 1, 2], 20)
    ev = evaluate_logits(
        _config(bootstrap_resamples=20, malignant_target_sensitivity=0.9), val_frame=_frame(y),
        val_logits=_logits(y, 0), test_frame=_frame(y, 60), test_logits=_logits(y, 1), class_names=NAMES,
        model_sha256="abc",
    )
    saved = {}
    monkeypatch.setattr(evaluation_lib, "_save", lambda fig, path: saved.__setitem__(Path(path).name, fig))
    write_evaluation(ev, out_dir=tmp_path / "eval", figures_dir=tmp_path / "plots", variant="center")
    assert sorted(saved) == ["confusion.png", "pr.png", "reliability.png", "roc.png"]
    for name, fig in saved.items():
        titles = [ax.get_title() for ax in fig.axes]
        assert titles and all(t.startswith("center: ") for t in titles), (name, titles)
    notes = [t.get_text() for t in saved["reliability.png"].axes[0].texts]
    after = ev.reliability["after"]
    assert sorted(notes) == sorted(f"n={n}" for n in after["count"] if n)  # one count per non-empty bin
    assert sum(after["count"]) == len(y)
