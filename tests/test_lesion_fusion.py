"""Lesion fusion (evaluate.lesion_fusion: score): the rule that chooses the weight on validation, the fused logits,
and that evaluate, operating_point.json and the predictor (infer, app) apply one and the same fusion.
Tiny timm models at 32 px; no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from assurexray.assessment import evaluation
from assurexray.assessment.evaluation import EvaluateConfig, evaluate_checkpoint, write_evaluation
from assurexray.learning.lesion_fusion import (
    MIN_VAL_GAIN,
    WEIGHT_GRID,
    FusionChoice,
    choose_fusion_weight,
    fuse_logits,
    tumour_presence,
)
from assurexray.learning.model import checkpoint_format, create_model, save_checkpoint
from assurexray.learning.prediction import OperatingPoint, load_operating_point, load_predictor

NAMES = ["Normal", "Benign", "Malignant"]
META = {"backbone": "test_efficientnet", "num_classes": 3, "class_names": NAMES, "dropout": 0.0, "input_size": 32,
        "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "clahe": False, "letterbox_fill": 0,
        "params": {}, "best_epoch": 0, "monitor": "macro_auc", "best_score": 0.5, "seed": 0}


# --- the rule ---------------------------------------------------------------------------------------------


def _validation(n: int = 300, *, informative: bool, seed: int = 0):
    """Logits that barely tell Normal from tumour, and a presence score that does (``informative``) or is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 0.3  # a weak classifier
    tumour = (y != 0).astype(float)
    presence = 3 * (tumour - 0.5) + rng.normal(0, 1, n) if informative else rng.normal(0, 2, n)
    return y, logits, presence


def test_fusion_lowers_only_the_normal_logit_by_weight_times_presence():
    logits = np.array([[1.0, 0.5, -1.0], [0.2, 0.1, 0.0]], dtype=np.float32)
    presence = np.array([2.0, -4.0])
    fused = fuse_logits(logits, presence, weight=0.5, normal_index=0)
    np.testing.assert_allclose(fused[:, 0], [0.0, 2.2], rtol=1e-6)
    np.testing.assert_array_equal(fused[:, 1:], logits[:, 1:])
    assert fused.dtype == logits.dtype
    np.testing.assert_array_equal(fuse_logits(logits, presence, weight=0.0, normal_index=0), logits)
    assert logits[0, 0] == 1.0  # the input is not modified


def test_presence_is_the_logit_of_the_maximum_clipped_so_a_saturated_map_stays_finite():
    s = tumour_presence(np.array([0.5, 0.9, 0.0, 1.0]))
    np.testing.assert_allclose(s[:2], [0.0, np.log(9)], rtol=1e-9)
    assert np.all(np.isfinite(s)) and s[2] == pytest.approx(-s[3]) and s[3] == pytest.approx(np.log(1e4 - 1))


def test_an_informative_presence_score_is_switched_on_with_the_weight_validation_prefers():
    y, logits, presence = _validation(informative=True)
    choice = choose_fusion_weight(y, logits, presence, normal_index=0)
    assert choice.on and choice.weight in WEIGHT_GRID and choice.weight == choice.best_weight
    assert choice.gain >= MIN_VAL_GAIN
    assert choice.val_macro_auc[choice.weight] == max(choice.val_macro_auc.values())
    assert set(choice.val_macro_auc) == set(WEIGHT_GRID)
    record = choice.record()
    assert record["on"] is True and record["weight"] == choice.weight and record["val_macro_auc"]["0"] < \
        record["val_macro_auc"][f"{choice.weight:g}"]


def test_a_noise_presence_score_stays_off_and_the_unfused_model_is_kept():
    y, logits, presence = _validation(informative=False)
    choice = choose_fusion_weight(y, logits, presence, normal_index=0)
    assert not choice.on and choice.weight == 0.0
    assert choice.gain < MIN_VAL_GAIN and "off" in choice.reason


def test_a_gain_under_the_bar_stays_off_even_when_a_weight_is_best():
    y, logits, presence = _validation(informative=True)
    choice = choose_fusion_weight(y, logits, presence, normal_index=0, min_gain=1.0)
    assert choice.best_weight > 0 and not choice.on and choice.weight == 0.0


def test_the_rule_refuses_a_grid_without_zero_and_a_validation_set_missing_a_class():
    y, logits, presence = _validation(informative=True)
    with pytest.raises(ValueError, match="must start with 0"):
        choose_fusion_weight(y, logits, presence, normal_index=0, grid=(0.5, 1.0))
    with pytest.raises(ValueError, match="holds 2 of 3 classes"):
        choose_fusion_weight(np.where(y == 2, 1, y), logits, presence, normal_index=0)


# --- the predictor applies the recorded weight ---------------------------------------------------------------


def _checkpoint(path: Path, *, lesion: bool = True) -> Path:
    torch.manual_seed(0)
    model = create_model("test_efficientnet", num_classes=3, dropout=0.0, lesion_head=lesion).eval()
    meta = {**META, "format_version": checkpoint_format(lesion_head=lesion)}
    meta.update({"lesion_head": True} if lesion else {})
    return save_checkpoint(path, model, meta)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(n, 32, 32)).astype(np.uint8)


def test_the_predictor_fuses_its_logits_with_its_own_lesion_maps_when_the_operating_point_says_so(tmp_path):
    path = _checkpoint(tmp_path / "m.pt")
    plain = load_predictor(path, operating_point=OperatingPoint())
    fused = load_predictor(path, operating_point=OperatingPoint(lesion_fusion_weight=0.5))
    boxed = _images(6)
    presence = plain.tumour_presence(boxed)
    expected_presence = tumour_presence(plain.lesion_maps(boxed).reshape(6, -1).max(axis=1))
    np.testing.assert_allclose(presence, expected_presence)
    np.testing.assert_allclose(fused.logits(boxed), fuse_logits(plain.logits(boxed), presence, weight=0.5,
                                                                 normal_index=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.logits(boxed), plain.logits(boxed))


def test_an_operating_point_with_a_fusion_weight_is_refused_for_a_model_without_lesion_decoder(tmp_path):
    path = _checkpoint(tmp_path / "m.pt", lesion=False)
    with pytest.raises(ValueError, match="lesion_fusion_weight 0.5 needs every model's lesion decoder"):
        load_predictor(path, operating_point=OperatingPoint(lesion_fusion_weight=0.5))


@pytest.mark.parametrize("value", [-1, "high", None])
def test_a_bad_fusion_weight_in_operating_point_json_is_named(tmp_path, value):
    from assurexray.learning.model import file_sha256
    path = _checkpoint(tmp_path / "m.pt")
    op = tmp_path / "operating_point.json"
    op.write_text(json.dumps({"temperature": 1.0, "malignant_threshold": 0.3, "model_sha256": file_sha256(path),
                              "lesion_fusion_weight": value}))
    with pytest.raises(ValueError, match="lesion_fusion_weight"):
        load_operating_point(op, model_sha256=file_sha256(path), class_names=NAMES)


# --- evaluate ------------------------------------------------------------------------------------------------

EVAL = {"bootstrap_resamples": 30, "bootstrap_cluster": False, "ci_level": 0.95, "calibration_bins": 5,
        "malignant_target_sensitivity": 0.8, "bootstrap_seed": 0, "batch_size": 16, "tta_flip": False}
#: train and val from centre 1; test: centre 2 (36 images, enough to adapt) and centre 1.
CENTRES = {"train": [1] * 6, "val": [1] * 30, "test": [2] * 36 + [1] * 12}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fusion")
    (root / "split").mkdir()
    start, images = 0, []
    for partition, centres in CENTRES.items():
        labels = np.tile([0, 1, 2], len(centres))[:len(centres)]
        n = labels.size
        pd.DataFrame({"row": np.arange(start, start + n), "image_id": [f"I{partition}{i}" for i in range(n)],
                      "label": np.asarray(NAMES, dtype=object)[labels], "label_idx": labels,
                      "group": [f"{partition}{i}" for i in range(n)], "center": centres}
                     ).to_csv(root / "split" / f"{partition}.csv", index=False)
        block = _images(n, seed=start)
        block[:, 8:24, 8:24] = np.clip(block[:, 8:24, 8:24] + (30 * labels)[:, None, None], 0, 255)
        images.append(block.astype(np.uint8))
        start += n
    (root / "prepared").mkdir()
    np.save(root / "prepared" / "images.npy", np.concatenate(images))
    _checkpoint(root / "model.pt")
    _checkpoint(root / "plain.pt", lesion=False)
    return root


def _evaluate(root: Path, model: str = "model.pt", **overrides):
    return evaluate_checkpoint(EvaluateConfig(**{**EVAL, **overrides}), prepared=root / "prepared",
                               split_dir=root / "split", model_path=root / model)


def _forced(weight: float):
    """A stand-in for the validation rule that applies ``weight`` (the wiring is tested, not the rule)."""
    def choose(y, logits, presence, *, normal_index):
        return FusionChoice(weight, {0.0: 0.5, weight: 0.6}, weight, 0.1, "forced by the test")
    return choose


def test_evaluate_without_fusion_writes_no_fusion_block_and_no_weight(run):
    result = _evaluate(run)
    assert "lesion_fusion" not in result.metrics and "lesion_fusion_weight" not in result.operating_point


def test_fusion_switched_off_by_validation_leaves_every_figure_as_the_unfused_model(run, monkeypatch):
    monkeypatch.setattr(evaluation, "choose_fusion_weight", _forced(0.0))
    plain, off = _evaluate(run), _evaluate(run, lesion_fusion="score")
    assert {k: v for k, v in off.metrics.items() if k != "lesion_fusion"} == plain.metrics
    block = off.metrics["lesion_fusion"]
    assert block["on"] is False and block["test"]["macro_auc"]["delta"]["value"] == 0.0
    assert off.operating_point["lesion_fusion_weight"] == 0.0


def test_fusion_switched_on_is_what_evaluate_scores_and_what_infer_reproduces(run, monkeypatch, tmp_path):
    monkeypatch.setattr(evaluation, "choose_fusion_weight", _forced(1.0))
    plain, fused = _evaluate(run), _evaluate(run, lesion_fusion="score", adapt="bn")
    block = fused.metrics["lesion_fusion"]
    assert block["on"] is True and block["weight"] == 1.0
    assert set(block["by_center"]) == {"1", "2"} and block["test"]["n"] == 48
    test = block["test"]["macro_auc"]
    assert test["unfused"] == pytest.approx(plain.metrics["headline"]["macro_auc"]["value"])
    assert test["fused"] == pytest.approx(fused.metrics["headline"]["macro_auc"]["value"])
    assert test["delta"]["value"] == pytest.approx(test["fused"] - test["unfused"])
    assert fused.metrics["headline"] != plain.metrics["headline"]
    assert "adapted" in fused.metrics and fused.metrics["adapted"]["by_center"]["2"]["n"] == 36
    # operating_point.json carries the weight; the predictor built from it gives evaluate's test probabilities
    write_evaluation(fused, out_dir=tmp_path / "eval", figures_dir=tmp_path / "fig", variant="center")
    saved = json.loads((tmp_path / "eval" / "operating_point.json").read_text())
    assert saved["lesion_fusion_weight"] == 1.0
    predictor = load_predictor(run / "model.pt", operating_point=tmp_path / "eval" / "operating_point.json")
    assert predictor.operating_point.lesion_fusion_weight == 1.0
    test_rows = pd.read_csv(run / "split" / "test.csv")
    images = np.load(run / "prepared" / "images.npy")[test_rows["row"].to_numpy()]
    probs = predictor.scores(predictor.logits_of(images, batch_size=16, progress=False)).probs
    table = fused.predictions[fused.predictions["partition"] == "test"]
    np.testing.assert_allclose(probs, table[[f"prob_{c}" for c in NAMES]].to_numpy(), atol=1e-5)


def test_fusion_on_a_model_without_lesion_decoder_is_refused_with_what_to_do(run):
    with pytest.raises(ValueError, match="lesion_fusion: score needs a lesion decoder.*model.lesion_head: true"):
        _evaluate(run, model="plain.pt", lesion_fusion="score")


def test_an_unknown_fusion_mode_is_named():
    with pytest.raises(ValueError, match="evaluate.lesion_fusion: expected one of"):
        EvaluateConfig(**EVAL, lesion_fusion="gated")
