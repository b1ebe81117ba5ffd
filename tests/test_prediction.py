"""The one prediction engine: evaluate, infer and the app score through it; seed ensembles average probabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from assurexray.learning import prediction
from assurexray.serving import cli, infer
from assurexray.learning import model as model_lib
from assurexray.assessment.evaluation import EvaluateConfig, evaluate_checkpoint, write_evaluation
from assurexray.learning.prediction import OperatingPoint, ensemble_sha256, load_predictor
from test_infer import CLASSES, read_rows, save_image, tiny_checkpoint, write_op


def seeded_checkpoint(path: Path, seed: int, **meta_changes) -> Path:
    """:func:`tiny_checkpoint` with other random weights (``seed``) and, optionally, another meta."""
    _, meta = model_lib.load_checkpoint(tiny_checkpoint(path))
    torch.manual_seed(seed)
    net = model_lib.create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none")
    return model_lib.save_checkpoint(path, net, {**meta, **meta_changes})


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("seeds")
    return [seeded_checkpoint(root / f"s{seed}" / "model.pt", seed) for seed in (1, 2)]


def boxed_images(n: int = 6, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8)


def raw_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """The model's own logits, computed here without the engine."""
    net, meta = model_lib.load_checkpoint(path)
    from assurexray.learning.transforms import eval_transform

    transform = eval_transform(meta)
    with torch.inference_mode():
        return net(torch.stack([transform(image=i)["image"] for i in images])).float().numpy()


def test_one_model_probabilities_are_its_logits_at_the_temperature_and_the_flag_is_the_threshold(members):
    images = boxed_images()
    z = raw_logits(members[0], images)
    op = OperatingPoint(temperature=2.0, malignant_threshold=0.3)
    predictor = load_predictor(members[0], operating_point=op)
    np.testing.assert_array_equal(predictor.logits(images), z)  # a single model's logits are untouched
    scores = predictor.predict(images)
    expected = softmax(z.astype(np.float64) / 2.0, axis=1)
    np.testing.assert_allclose(scores.probs, expected, rtol=1e-6)
    assert scores.malignant_flag.tolist() == (expected[:, 2] >= 0.3).astype(int).tolist()
    assert scores.pred == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert load_predictor(members[0], operating_point=OperatingPoint()).predict(images).malignant_flag is None


def test_an_ensemble_averages_its_members_probabilities_image_by_image(members):
    images = boxed_images()
    mean = np.mean([softmax(raw_logits(m, images).astype(np.float64), axis=1) for m in members], axis=0)
    ensemble = load_predictor(members, operating_point=OperatingPoint())
    np.testing.assert_allclose(ensemble.predict(images).probs, mean, rtol=1e-9)
    alone = [load_predictor(m, operating_point=OperatingPoint()).predict(images).probs for m in members]
    assert not np.allclose(alone[0], alone[1])  # the members disagree, so the average is a real test
    assert ensemble.is_ensemble and ensemble.model_sha256 == ensemble_sha256(ensemble.member_sha256s)


def test_the_ensemble_identity_ignores_member_order_but_not_membership():
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    assert ensemble_sha256([a, b]) == ensemble_sha256([b, a])
    assert ensemble_sha256([a, b]) != ensemble_sha256([a, c])


@pytest.mark.parametrize("change, message", [
    ({"class_names": ["Normal", "Malignant", "Benign"]}, r"class_names .* differ from .*s0.*model\.pt"),
    ({"input_size": 48}, r"preprocessing differs .*input_size 48 vs 32"),
    ({"mean": [0.4, 0.4, 0.4]}, r"preprocessing differs .*mean"),
])
def test_members_with_other_classes_or_preprocessing_are_refused(tmp_path, change, message):
    first = seeded_checkpoint(tmp_path / "s0" / "model.pt", 0)
    other = seeded_checkpoint(tmp_path / "s1" / "model.pt", 1, **change)
    with pytest.raises(ValueError, match=message):
        load_predictor([first, other], operating_point=OperatingPoint())


def test_a_checkpoint_named_twice_is_not_an_ensemble(members):
    with pytest.raises(ValueError, match=r"named twice"):
        load_predictor([members[0], members[0]])
    with pytest.raises(ValueError, match=r"no model given"):
        load_predictor([])


def test_an_ensemble_takes_only_an_operating_point_fitted_for_the_ensemble(members, tmp_path, caplog):
    images = boxed_images()
    own = write_op(tmp_path / "member.json", members[0])  # fitted for the first member alone
    with pytest.raises(ValueError, match=r"model_sha256 .* does not match"):
        load_predictor(members, operating_point=own)
    sha = ensemble_sha256([model_lib.file_sha256(m) for m in members])
    fitted = write_op(tmp_path / "ensemble.json", members[0], temperature=1.5, threshold=0.2, sha=sha)
    predictor = load_predictor(members, operating_point=fitted)
    assert predictor.operating_point.temperature == 1.5 and predictor.predict(images).malignant_flag is not None
    with caplog.at_level("WARNING"):
        bare = load_predictor(members)
    assert bare.operating_point == OperatingPoint() and "has no default operating point" in caplog.text


def write_partition_fixture(root: Path, n: int = 48) -> tuple[Path, Path, np.ndarray]:
    """A prepared cache of ``n`` random 32 px images and a val/test split (labels cycle through the classes)."""
    images = boxed_images(n)
    (root / "prep").mkdir(parents=True)
    np.save(root / "prep" / "images.npy", images)
    (root / "split").mkdir()
    for part, rows in (("val", range(0, n // 2)), ("test", range(n // 2, n))):
        y = [r % 3 for r in rows]
        pd.DataFrame({"row": list(rows), "image_id": [f"IMG{r}.png" for r in rows],
                      "label": [CLASSES[i] for i in y], "label_idx": y, "group": [str(r) for r in rows],
                      "center": [1] * len(y)}).to_csv(root / "split" / f"{part}.csv", index=False)
    return root / "prep", root / "split", images


@pytest.mark.parametrize("n_models", [1, 2])
def test_infer_gives_the_probabilities_and_flags_evaluation_wrote(members, tmp_path, n_models):
    """The promise of the engine: a test image scored by `assurexray infer` gets its predictions.csv row."""
    prepared, split, images = write_partition_fixture(tmp_path)
    models = members[:n_models]
    config = EvaluateConfig(bootstrap_resamples=20, bootstrap_cluster=False, ci_level=0.95, calibration_bins=5,
                            malignant_target_sensitivity=0.5, bootstrap_seed=0,
                            batch_size=16, tta_flip=True)  # infer's default batch
    evaluation = evaluate_checkpoint(config, prepared=prepared, split_dir=split, model_path=models)
    write_evaluation(evaluation, out_dir=tmp_path / "eval", figures_dir=tmp_path / "figs")
    op = json.loads((tmp_path / "eval" / "operating_point.json").read_text())
    assert op["model_sha256"] == load_predictor(models, operating_point=OperatingPoint()).model_sha256
    assert ("member_sha256s" in op) == (n_models > 1)
    written = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    test = written[written["partition"] == "test"].reset_index(drop=True)
    files = [save_image(tmp_path / "in" / f"{i:03d}.png", images[row]) for i, row in enumerate(test["row"])]
    argv = ["infer", *map(str, files), "--operating-point", str(tmp_path / "eval" / "operating_point.json"),
            "--output", str(tmp_path / "out.jsonl")]
    for m in models:
        argv += ["--model", str(m)]
    assert cli.main(argv) == 0
    rows = read_rows(tmp_path / "out.jsonl")
    for c in CLASSES:
        np.testing.assert_allclose([r[f"prob_{c}"] for r in rows], test[f"prob_{c}"], rtol=1e-6, atol=1e-9)
    assert [r["malignant_flag"] for r in rows] == test["malignant_flag"].tolist()
    assert 0 < test["malignant_flag"].sum() < len(test)  # the threshold splits the images: the check has teeth


def test_letterboxing_happens_once_and_matches_the_checkpoints_preprocessing(members):
    from assurexray.learning.transforms import prepare_image

    predictor = load_predictor(members[0], operating_point=OperatingPoint())
    gray = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (40, 1))  # 80x40: padded top and bottom
    boxed, scores = predictor.predict_grays([gray])
    assert boxed.shape == (1, 32, 32)
    net, meta = model_lib.load_checkpoint(members[0])
    with torch.inference_mode():
        direct = softmax(net(prepare_image(gray, meta)[None]).float().numpy().astype(np.float64), axis=1)
    np.testing.assert_allclose(scores.probs, direct, rtol=1e-6)


# --- the Grad-CAM layer travels with an explicit, logged choice ----------------------------------------------


def test_an_explicit_gradcam_layer_is_used_and_logged(tmp_path, monkeypatch, caplog):
    model_path = tiny_checkpoint(tmp_path / "elsewhere" / "model.pt")
    used = []
    real = infer.compute_heatmaps
    monkeypatch.setattr(infer, "compute_heatmaps", lambda *a, **k: used.append(k["target_layer"]) or real(*a, **k))
    image = save_image(tmp_path / "img.png")
    with caplog.at_level("INFO", logger="assurexray.serving.infer"):
        infer.run_inference([image], model_path=model_path, gradcam_dir=tmp_path / "cams", gradcam_layer="blocks.3")
        infer.run_inference([image], model_path=model_path, gradcam_dir=tmp_path / "cams", gradcam_layer="auto")
    assert used == ["blocks.3", None]
    assert "Grad-CAM layer 'blocks.3' (from --gradcam-layer)" in caplog.text and "automatic (--gradcam-layer auto)" \
        in caplog.text


def test_without_an_explain_record_the_automatic_layer_is_announced(tmp_path, caplog):
    model_path = tiny_checkpoint(tmp_path / "elsewhere" / "model.pt")
    with caplog.at_level("WARNING"):
        infer.run_inference([save_image(tmp_path / "img.png")], model_path=model_path, gradcam_dir=tmp_path / "c")
    assert "Grad-CAM layer: automatic" in caplog.text and "explain" in caplog.text


@pytest.mark.parametrize("recorded", [True, False])
def test_a_layer_the_model_lacks_is_an_error_never_a_silent_switch(tmp_path, recorded):
    model_path = tiny_checkpoint(tmp_path / "models" / "v" / "model.pt")
    layer = None
    if recorded:  # the explain stage's record names a layer of another architecture
        explain = tmp_path / "metrics" / "v" / "explain" / "metrics.json"
        explain.parent.mkdir(parents=True)
        explain.write_text(json.dumps({"target_layer": "layer4.2"}), encoding="utf-8")
    else:
        layer = "layer4.2"
    source = r"metrics/v/explain/metrics\.json" if recorded else "--gradcam-layer"
    with pytest.raises(ValueError, match=rf"Grad-CAM layer 'layer4\.2' \(from .*{source}\) is not a module of"):
        infer.run_inference([save_image(tmp_path / "img.png")], model_path=model_path,
                            gradcam_dir=tmp_path / "cams", gradcam_layer=layer)


def test_an_ensemble_refuses_gradcam_with_the_fix(members, tmp_path):
    with pytest.raises(ValueError, match=r"ensemble of 2 models has no single Grad-CAM layer.*single --model"):
        infer.run_inference([save_image(tmp_path / "img.png")], model_path=members, gradcam_dir=tmp_path / "c")


def test_the_cli_passes_every_model_and_the_layer(members, tmp_path, capsys):
    image = save_image(tmp_path / "img.png")
    code = cli.main(["infer", str(image), "--model", str(members[0]), "--model", str(members[1]),
                     "--output", str(tmp_path / "o.jsonl")])
    assert code == 0
    expected = load_predictor(members, operating_point=OperatingPoint()).model_sha256
    assert read_rows(tmp_path / "o.jsonl")[0]["model_sha256"] == expected
    assert cli.main(["infer", str(image), "--model", str(members[0]), "--gradcam", str(tmp_path / "c"),
                     "--gradcam-layer", "no.such.layer"]) == 2
    assert "no.such.layer" in capsys.readouterr().err


def test_the_app_and_infer_share_the_engine(members, tmp_path):
    """webapp predictions come from infer.predict_images, which scores through the Predictor."""
    from assurexray.serving import webapp

    root = tmp_path / "project"
    model = root / "models" / "stratified" / "model.pt"
    model.parent.mkdir(parents=True)
    shutil.copy(members[0], model)
    path = save_image(tmp_path / "img.png", np.asarray(Image.open(save_image(tmp_path / "g.png")).convert("L")))
    app = webapp.predict_file(path, layout=webapp.Layout(root), variant="stratified")
    cli_row = infer.run_inference([path], model_path=model).predictions[0]
    assert app.probs == pytest.approx(cli_row.probs, abs=1e-12) and app.pred == cli_row.pred
    assert app.outcome.probs == app.probs and app.temperature == 1.0 and app.malignant_threshold is None
    assert prediction.default_operating_point_path(model) == webapp.Layout(root).operating_point("stratified")


@pytest.mark.parametrize("tta_flip", [None, False, True])
def test_the_operating_point_evaluate_writes_is_what_inference_reads(tmp_path, tta_flip):
    record = prediction.operating_point_record(temperature=1.7, malignant_threshold=0.25, target_sensitivity=0.9,
                                               val_sensitivity=0.92, model_sha256="ab" * 32, tta_flip=tta_flip)
    assert list(record)[:5] == ["temperature", "malignant_threshold", "target_sensitivity", "val_sensitivity",
                                "model_sha256"]
    path = tmp_path / "operating_point.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    op = prediction.load_operating_point(path, model_sha256="AB" * 32, class_names=CLASSES)
    assert op == OperatingPoint(temperature=1.7, malignant_threshold=0.25, source=path, tta_flip=bool(tta_flip),
                                target_sensitivity=0.9)


def test_how_the_threshold_was_chosen_travels_with_it_to_inference(tmp_path):
    """operating_point.json carries rule, reliable and reason; infer and the app read them into the
    OperatingPoint, whose ``caveat`` is the warning to show wherever the threshold is shown."""
    reason = "chosen on 5 validation Malignant image(s), fewer than the 29 needed"
    record = prediction.operating_point_record(temperature=1.0, malignant_threshold=0.333333, target_sensitivity=0.9,
                                               val_sensitivity=1.0, model_sha256="ab" * 32, val_positives=5,
                                               rule="capped_point_estimate", reliable=False, reason=reason)
    path = tmp_path / "operating_point.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    op = prediction.load_operating_point(path, model_sha256="ab" * 32, class_names=CLASSES)
    assert (op.val_positives, op.rule, op.reliable, op.reason) == (5, "capped_point_estimate", False, reason)
    assert op.caveat == f"UNRELIABLE Malignant threshold: {reason}."
    assert OperatingPoint(malignant_threshold=0.1, reliable=True).caveat is None
    path.write_text(json.dumps({**record, "reliable": "no"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"operating_point\.json: reliable must be true or false, got 'no'"):
        prediction.load_operating_point(path, model_sha256="ab" * 32, class_names=CLASSES)


def test_infer_and_the_app_score_a_large_jpeg_on_the_pixels_prepare_cached(members, tmp_path):
    """An original JPEG is decoded as prepare decodes it (draft mode, full-file geometry), not in full: infer and
    the app then give exactly the probabilities evaluation computes from its cached copy."""
    from assurexray.serving import webapp
    from assurexray.data.cache import _process_one
    from assurexray.data.imaging import decode_gray, letterbox
    from test_imaging import _smooth_jpeg

    path = _smooth_jpeg(tmp_path / "big.jpg", 400, 300)  # >= 2x the 32 px input: decoded at 1/4 scale
    cached = _process_one(("big", str(path), None, 32))[0]  # (32, 32) as prepare caches it
    full_decode, _ = letterbox(decode_gray(path), 32)
    assert not np.array_equal(cached, full_decode)  # the two decodes differ, so the check below has teeth
    predictor = load_predictor(members[0], operating_point=OperatingPoint())
    expected = predictor.predict(cached[None]).probs[0]

    row = infer.run_inference([path], model_path=members[0]).predictions[0]
    np.testing.assert_allclose([row.probs[c] for c in CLASSES], expected, rtol=0, atol=1e-12)

    root = tmp_path / "project"
    model = root / "models" / "stratified" / "model.pt"
    model.parent.mkdir(parents=True)
    shutil.copy(members[0], model)
    for app in (webapp.predict_file(path, layout=webapp.Layout(root), variant="stratified"),
                webapp.predict_upload("big.jpg", path.read_bytes(), layout=webapp.Layout(root),
                                      variant="stratified")):
        np.testing.assert_allclose([app.probs[c] for c in CLASSES], expected, rtol=0, atol=1e-12)
        assert app.gray.shape == (300, 400)  # shown in full; only the scoring decode is reduced


def test_overlays_of_a_reduced_decode_keep_the_full_files_canvas(members, tmp_path):
    from assurexray.assessment.gallery import render_overlay
    from assurexray.data.imaging import decode_gray
    from test_imaging import _smooth_jpeg

    path = _smooth_jpeg(tmp_path / "big.jpg", 400, 300)
    result = infer.run_inference([path], model_path=members[0], gradcam_dir=tmp_path / "cams",
                                 gradcam_layer="auto")
    written = np.asarray(Image.open(result.gradcam_paths[str(path)]))
    heat = np.zeros((32, 32), dtype=np.float32)
    same_canvas = render_overlay(decode_gray(path), heat, caption="x")
    assert written.shape == same_canvas.shape  # the canvas of the full file, not of the 1/4-scale decode
