"""The Streamlit demo: page logic (assurexray.serving.webapp) directly, and app/app.py through Streamlit's AppTest."""

from __future__ import annotations

import json
import math
import re
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_infer import CAVEAT, RELIABLE, UNRELIABLE, bright_lesion_model, dicom_bytes

from assurexray import DISCLAIMER
from assurexray.assessment import familiarity as fam
from assurexray.data.decoding import read_bytes_for_letterbox
from assurexray.learning.prediction import OperatingPoint, load_predictor
from assurexray.serving import webapp
from assurexray.learning import model as model_lib
from assurexray.serving.infer import run_inference

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "app" / "app.py"
CLASSES = ["Normal", "Benign", "Malignant"]
THRESHOLD = 0.3  # Malignant threshold of the tiny stratified model's operating point
TEMPERATURE = 1.5


# --- builders (also used by test_app_browser.py) ---------------------------------------------------------


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    """A horizontal grey ramp, uint8 (height, width)."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def jpeg_bytes(array: np.ndarray | None = None) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(gradient() if array is None else array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def build_project(root: Path, *, variants: tuple[str, ...] = ("stratified", "center"), operating_point=True,
                  lesion_head: bool = False, threshold_record: dict | None = None) -> Path:
    """A project root with tiny random test_efficientnet models (32 px), an operating point for the
    stratified one (none for center) and one sample image with its index.csv label. ``lesion_head``: the
    stratified model has a lesion decoder whose map follows brightness (test_infer.bright_lesion_model).
    ``threshold_record``: how the threshold was chosen (test_infer.UNRELIABLE / RELIABLE); None: not recorded."""
    for i, variant in enumerate(variants):
        torch.manual_seed(i)
        lesion = lesion_head and variant == "stratified"
        net = (bright_lesion_model() if lesion else
               model_lib.create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none"))
        meta = {
            "backbone": "test_efficientnet", "num_classes": 3, "class_names": CLASSES, "dropout": 0.0,
            "input_size": 32, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "clahe": False,
            "letterbox_fill": 0, "params": {}, "best_epoch": 0, "monitor": "macro_auc", "best_score": 0.5,
            "seed": 0, "format_version": model_lib.checkpoint_format(lesion_head=lesion),
            **({"lesion_head": True} if lesion else {}),
        }
        if variant == "stratified":  # what the train stage records for a model trained on the synthetic sample
            meta["data"] = {"source": "sample", "synthetic": True, "index_sha256": "cd" * 32, "n_images": 3,
                            "split": "stratified", "n_train": 1, "n_val": 1, "data_date": "2020-01-01"}
        path = model_lib.save_checkpoint(root / "models" / variant / "model.pt", net, meta)
        if operating_point and variant == "stratified":
            op = root / "metrics" / variant / "eval" / "operating_point.json"
            op.parent.mkdir(parents=True, exist_ok=True)
            op.write_text(json.dumps({
                "temperature": TEMPERATURE, "malignant_threshold": THRESHOLD, "target_sensitivity": 0.9,
                "val_sensitivity": 0.9, "model_sha256": model_lib.file_sha256(path), **(threshold_record or {}),
            }), encoding="utf-8")
    images = root / "data" / "raw" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in ("IMG000001.jpeg", "IMG000002.jpeg", "IMG000003.jpeg"):
        (images / name).write_bytes(jpeg_bytes())
    # IMG000002 is a stratified TEST image, IMG000003 a centre-holdout test image; IMG000001 trains both
    for variant, test_row in (("stratified", "1,IMG000002.jpeg,Malignant"), ("center", "2,IMG000003.jpeg,Normal")):
        split = root / "data" / "splits" / variant
        split.mkdir(parents=True, exist_ok=True)
        (split / "train.csv").write_text("row,image_id,label\n0,IMG000001.jpeg,Benign\n", encoding="utf-8")
        (split / "test.csv").write_text(f"row,image_id,label\n{test_row}\n", encoding="utf-8")
    return root


def ci(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "ci_low": low, "ci_high": high}


def write_results(root: Path, *, threshold_records: dict[str, dict] | None = None) -> Path:
    """Evaluate/explain metrics of both variants, compare.json and one figure (stratified ROC).
    ``threshold_records``: per variant, how its threshold was chosen (test_infer.UNRELIABLE / RELIABLE)."""
    for variant, auc in (("stratified", 0.9), ("center", 0.7)):
        eval_dir = root / "metrics" / variant / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / "metrics.json").write_text(json.dumps({
            "n_test": 20, "n_val": 10, "class_names": CLASSES,
            "headline": {"macro_auc": ci(auc, auc - 0.1, auc + 0.05), "accuracy": ci(0.6, 0.5, 0.7)},
            "calibration": {"temperature": 1.25, "ece_before": 0.1, "ece_after": 0.05, "bins": 10},
            "operating_point": {"class": "Malignant", "threshold": 0.25, "target_sensitivity": 0.9,
                                "val_sensitivity": 0.92, "test_sensitivity": ci(0.8, 0.6, 0.95),
                                "test_specificity": ci(0.7, 0.55, 0.85),
                                **(threshold_records or {}).get(variant, {})},
        }), encoding="utf-8")
        explain_dir = root / "metrics" / variant / "explain"
        explain_dir.mkdir(parents=True, exist_ok=True)
        loc = {"pointing_game": ci(0.5, 0.3, 0.7), "n": 8}
        (explain_dir / "metrics.json").write_text(json.dumps({
            "method": "gradcam", "model": {"overall": loc},
            "baseline": {"overall": {"pointing_game": ci(0.4, 0.2, 0.6)}},
        }), encoding="utf-8")
    (root / "metrics" / "compare.json").write_text(json.dumps({
        "headline": {"macro_auc": {"stratified": ci(0.9, 0.8, 0.95), "center": ci(0.7, 0.6, 0.75),
                                   "gap": ci(0.2, 0.05, 0.35)}},
        "localization": {}, "gap_method": "gap = stratified - center",
    }), encoding="utf-8")
    figure = root / "plots" / "stratified" / "eval" / "roc.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient()).save(figure)
    return root


def png_header_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose CRC-correct header claims ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(16))) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("project"))


@pytest.fixture()
def layout(project) -> webapp.Layout:
    return webapp.Layout(project)


@pytest.fixture(scope="module")
def lesion_project(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("lesion_project"), lesion_head=True)


def run_app(root: Path, monkeypatch, *, page: str | None = None) -> AppTest:
    monkeypatch.setenv(webapp.ROOT_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page is not None:
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [element.value for element in at.get(kind)]


def page_texts(node) -> list[str]:
    """The text of every element under ``node`` (``at.main``, ``at.sidebar``) in page order; a table as its cells."""
    shown = []
    for child in getattr(node, "children", {}).values():
        if getattr(child, "children", None):
            shown += page_texts(child)
            continue
        value = getattr(child, "value", None)
        shown.append(value.to_string() if hasattr(value, "to_string") else str(value if value is not None else
                                                                                getattr(child, "label", "")))
    return shown


def noise_jpeg() -> bytes:
    return jpeg_bytes(np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8))


def with_input_check(root: Path) -> Path:
    """Give the stratified model of ``root`` an input check centred on the ramp upload (jpeg_bytes()) itself, with
    identity metric and a tiny threshold: the ramp is familiar (distance 0), any other image is not."""
    model = webapp.Layout(root).model("stratified")
    predictor = load_predictor(model, operating_point=OperatingPoint())
    ramp = predictor.letterbox([read_bytes_for_letterbox(jpeg_bytes(), predictor.input_size, name="'ramp.jpg'")])
    features = fam.pooled_features(predictor, ramp).astype(np.float64)
    check = fam.Familiarity(means=features, precision=np.eye(features.shape[1], dtype=np.float32), threshold=1e-4,
                            quantile=0.99, model_sha256=model_lib.file_sha256(model), class_names=("Normal",),
                            shrinkage=0.0, n_train=1, n_val=1)
    fam.write_familiarity(webapp.Layout(root).operating_point("stratified").parent / fam.FAMILIARITY_FILE, check)
    return root


# --- page logic --------------------------------------------------------------------------------------------


def test_project_root_defaults_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert webapp.project_root({}) == tmp_path


def test_project_root_follows_the_environment_variable(tmp_path):
    assert webapp.project_root({webapp.ROOT_ENV: str(tmp_path)}) == tmp_path.resolve()


def test_project_root_names_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ASSUREXRAY_ROOT='.*nowhere': no such directory"):
        webapp.project_root({webapp.ROOT_ENV: str(tmp_path / "nowhere")})


def test_models_are_found_and_only_each_splits_test_images_are_offered(layout, project):
    assert webapp.available_models(layout) == ["stratified", "center"]
    images = project / "data" / "raw" / "images"
    assert webapp.held_out_images(layout, "stratified") == [
        webapp.Sample(images / "IMG000002.jpeg", "Malignant", "test", "stratified")]
    assert webapp.held_out_images(layout, "center") == [webapp.Sample(images / "IMG000003.jpeg", "Normal", "test",
                                                                   "center")]
    assert webapp.held_out_images(layout, "stratified")[0].title() == (
        "IMG000002.jpeg (test partition of the stratified split, true label Malignant)")


def test_an_empty_root_has_no_models_or_samples(tmp_path):
    empty = webapp.Layout(tmp_path)
    assert (webapp.available_models(empty), webapp.held_out_images(empty, "stratified")) == ([], [])


def test_a_test_split_without_labels_is_named(tmp_path):
    (tmp_path / "data" / "splits" / "center").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "images").mkdir(parents=True)
    (tmp_path / "data" / "splits" / "center" / "test.csv").write_text("row,image_id\n0,a.jpeg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.csv: missing column\(s\) \['label'\].*`dvc repro split`"):
        webapp.held_out_images(webapp.Layout(tmp_path), "center")


BAD_UPLOADS = {
    "not an image": ("notes.png", b"hello, not pixels", {}, r"'notes.png': not a readable image"),
    "corrupt jpeg": ("cut.jpg", jpeg_bytes()[:300], {}, r"'cut.jpg'.*(corrupt|not a readable image)"),
    "empty file": ("empty.png", b"", {}, r"'empty.png': the file is empty \(0 bytes\)"),
    "wrong type": ("scan.jp2", b"\x00\x00\x00\x0cjP  ", {}, r"'scan.jp2': unsupported file type '.jp2'; upload one of .jpg"),
    "over the upload size": ("big.png", bytes(2 * 1024 * 1024), {"max_mb": 1},
                             r"'big.png': 2.0 MB exceeds the upload limit of 1 MB"),
    "over the pixel limit": ("wide.jpg", jpeg_bytes(), {"max_pixels": 1000},
                             r"'wide.jpg': image too large: 64x48 = 3072 pixels exceeds max_pixels=1000"),
    "header-only bomb under PIL's limit": ("bomb.png", png_header_bytes(9000, 9000), {},
                                           r"'bomb.png': image too large: 9000x9000 = 81000000 pixels"),
    "decompression bomb": ("bomb.png", png_header_bytes(30000, 30000), {},
                           r"'bomb.png': image too large: 30000x30000 = 900000000 pixels exceeds max_pixels=50000000"),
    "multi-frame dicom": ("cine.dcm", dicom_bytes(np.zeros((2, 8, 8)), frames=2), {},
                          r"'cine.dcm': multi-frame DICOM with NumberOfFrames=2"),
    "dicom without pixels": ("report.dcm", dicom_bytes(np.zeros((8, 8)), pixels=False), {},
                             r"'report.dcm': DICOM object has no pixel data"),
}


@pytest.mark.parametrize("name,data,options,message", BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
def test_bad_uploads_are_refused_with_a_message_naming_the_file(name, data, options, message):
    with pytest.raises(ValueError, match=message):
        webapp.decode_upload(name, data, **options)


def _refuse_file_writes(patch: pytest.MonkeyPatch) -> None:
    """Make any temp-file creation or file write fail: uploads must stay in memory."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the app tried to write a file while handling an upload")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory", "SpooledTemporaryFile"):
        patch.setattr(tempfile, name, refuse)
    patch.setattr(Path, "write_bytes", refuse)
    patch.setattr(Path, "write_text", refuse)
    patch.setattr(Image.Image, "save", refuse)


def test_uploads_decode_like_files_including_dicom_without_writing_any_file(monkeypatch):
    stored = np.arange(48 * 40).reshape(40, 48) % 4096
    dicom, jpeg = dicom_bytes(stored), jpeg_bytes()
    with monkeypatch.context() as patch:
        _refuse_file_writes(patch)
        gray = webapp.decode_upload("chest.dcm", dicom)
        ramp = webapp.decode_upload("ramp.png", jpeg)
    assert gray.shape == (40, 48) and gray.dtype == np.uint8 and (gray.min(), gray.max()) == (0, 255)
    assert ramp.shape == (48, 64)


def test_a_sample_prediction_matches_assurexray_infer(layout, project):
    sample = webapp.held_out_images(layout, "stratified")[0].path
    got = webapp.predict_file(sample, layout=layout, variant="stratified")
    expected = run_inference([sample], model_path=layout.model("stratified")).predictions[0]
    assert got.probs == pytest.approx(expected.probs, abs=1e-12)
    assert math.isclose(sum(got.probs.values()), 1.0, abs_tol=1e-9)
    assert got.pred == max(got.probs, key=got.probs.get) == expected.pred
    assert got.malignant_flag == int(got.probs["Malignant"] >= THRESHOLD) == expected.malignant_flag
    assert (got.malignant_threshold, got.temperature) == (THRESHOLD, TEMPERATURE)
    assert got.gray.shape == (48, 64) and got.overlay.ndim == 3 and got.overlay.shape[2] == 3


def test_an_upload_gets_the_same_prediction_as_the_file_on_disk_without_writing_any_file(layout, monkeypatch):
    sample = webapp.held_out_images(layout, "stratified")[0].path
    from_file = webapp.predict_file(sample, layout=layout, variant="center")
    data = sample.read_bytes()
    with monkeypatch.context() as patch:
        _refuse_file_writes(patch)
        from_upload = webapp.predict_upload("mine.jpeg", data, layout=layout, variant="center")
    assert from_upload.probs == from_file.probs and from_upload.name == "mine.jpeg"
    assert np.array_equal(from_upload.overlay, from_file.overlay)


def test_predicting_a_bad_upload_names_it(layout):
    with pytest.raises(ValueError, match=r"'cine.dcm': multi-frame DICOM"):
        webapp.predict_upload("cine.dcm", dicom_bytes(np.zeros((2, 8, 8)), frames=2), layout=layout,
                              variant="stratified")


def test_predicting_without_a_model_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.pt: model not found; run `dvc repro`"):
        webapp.predict_upload("a.jpg", jpeg_bytes(), layout=webapp.Layout(tmp_path), variant="center")


def test_the_decision_explains_the_threshold_or_its_absence(layout):
    sample = webapp.held_out_images(layout, "stratified")[0].path
    with_op = webapp.predict_file(sample, layout=layout, variant="stratified")
    without = webapp.predict_file(sample, layout=layout, variant="center")
    p = with_op.probs["Malignant"]
    relation, verdict = (">=", "FLAGGED as possibly Malignant") if p >= THRESHOLD else ("<", "not flagged")
    assert webapp.decision_text(with_op, layout=layout, variant="stratified").startswith(
        f"Malignant flag at the operating point: {verdict}")
    assert f"(P(Malignant) = {p:.3f} {relation} 0.300)" in webapp.decision_text(
        with_op, layout=layout, variant="stratified")
    top = max(with_op.probs, key=with_op.probs.get)
    assert webapp.top_class_text(with_op) == f"Most probable class (argmax): {top} (p = {with_op.probs[top]:.3f})"
    assert webapp.threshold_text(without, layout=layout, variant="center") == ""
    assert without.malignant_flag is None and without.temperature == 1.0
    assert webapp.decision_text(without, layout=layout, variant="center").startswith(
        "No Malignant decision: operating point metrics/center/eval/operating_point.json not found")


def test_the_threshold_text_names_the_split_and_gives_specificity_beside_sensitivity(tmp_path):
    root = write_results(build_project(tmp_path))
    layout = webapp.Layout(root)
    # validation rows of predictions.csv: 2 Malignant (both flagged), 4 others (1 flagged) -> spec 0.750
    rows = [("val", "Malignant", 1)] * 2 + [("val", "Benign", 1)] + [("val", "Normal", 0)] * 3 + [("test", "Benign", 1)]
    layout.predictions("stratified").write_text(
        "partition,label,malignant_flag\n" + "".join(f"{p},{c},{f}\n" for p, c, f in rows), encoding="utf-8")
    prediction = webapp.predict_file(webapp.held_out_images(layout, "stratified")[0].path, layout=layout,
                                     variant="stratified")
    text = webapp.threshold_text(prediction, layout=layout, variant="stratified")
    assert text.startswith("Malignant flag when P(Malignant) >= 0.300: a threshold chosen on the validation "
                           "partition of the stratified split to reach sensitivity >= 0.90; on validation, "
                           "sensitivity 1.000 (2 Malignant images) and specificity 0.750 (4 other images); "
                           "on test, sensitivity 0.800 (0.600–0.950) and specificity 0.700 (0.550–0.850).")
    op_rows = {r["quantity"]: r for r in webapp.operating_point_rows(webapp.load_results(layout))}
    assert op_rows["Malignant specificity at the operating point (validation)"]["stratified"] == "0.750"
    assert op_rows["Malignant specificity at the operating point (validation)"]["center"] == "n/a"
    assert op_rows["Malignant sensitivity at the operating point (test)"]["center"] == "0.800 (0.600–0.950)"


@pytest.mark.parametrize("reliable", [False, True], ids=["unreliable", "reliable"])
def test_the_threshold_text_leads_with_an_unreliable_thresholds_caveat_and_claims_sensitivity_only_when_reliable(
        tmp_path, reliable):
    layout = webapp.Layout(build_project(tmp_path, threshold_record=RELIABLE if reliable else UNRELIABLE))
    prediction = webapp.predict_file(webapp.held_out_images(layout, "stratified")[0].path, layout=layout,
                                     variant="stratified")
    text = webapp.threshold_text(prediction, layout=layout, variant="stratified")
    threshold = "Malignant flag when P(Malignant) >= 0.300: a threshold chosen on the validation partition"
    claim = "its threshold was chosen so that a lower confidence bound on validation sensitivity reaches 0.90."
    # 0.3 <= 1/3: every image with Malignant on top is flagged, whichever way the threshold was chosen
    relation = ("The flag answers a different question from the most probable class: it is set for every image "
                "whose most probable class is Malignant, and can also fire while another class has the highest "
                "probability")
    if reliable:
        assert text.startswith(threshold) and "UNRELIABLE" not in text
        assert text.endswith(f"{relation}; {claim}")
    else:
        assert text.startswith(f"{CAVEAT} {threshold}")
        assert text.endswith(f"{relation}.") and "miss few" not in text and "lower confidence bound on val" not in text


def test_the_threshold_text_does_not_say_every_malignant_top_class_is_flagged_above_one_over_k(tmp_path):
    layout = webapp.Layout(build_project(tmp_path))
    op = layout.operating_point("stratified")
    op.write_text(op.read_text(encoding="utf-8").replace(f'"malignant_threshold": {THRESHOLD}',
                                                         '"malignant_threshold": 0.5'), encoding="utf-8")
    prediction = webapp.predict_file(webapp.held_out_images(layout, "stratified")[0].path, layout=layout,
                                     variant="stratified")
    text = webapp.threshold_text(prediction, layout=layout, variant="stratified")
    assert text.startswith("Malignant flag when P(Malignant) >= 0.500")
    assert text.endswith("it can fire while another class has the highest probability, and stay off while "
                         "Malignant has it.")


def test_the_training_data_is_named_synthetic_or_unknown(layout):
    sample = webapp.held_out_images(layout, "stratified")[0].path
    synthetic = webapp.predict_file(sample, layout=layout, variant="stratified")
    old = webapp.predict_file(sample, layout=layout, variant="center")
    assert synthetic.trained_on == "synthetic-sample" and old.trained_on == "unknown"
    assert webapp.training_text(synthetic).startswith("Trained on the built-in SYNTHETIC sample")
    assert "cdcdcdcdcdcd" in webapp.training_text(synthetic)
    assert webapp.training_text(old).startswith("Training data unknown")


def test_a_lesion_head_model_shows_its_map_with_the_words_and_a_box_in_the_images_own_pixels(lesion_project):
    layout = webapp.Layout(lesion_project)
    sample = webapp.held_out_images(layout, "stratified")[0].path  # the 64 x 48 ramp: bright on the right
    prediction = webapp.predict_file(sample, layout=layout, variant="stratified")
    image, caption = webapp.lesion_panel(prediction)
    assert image is prediction.lesion_overlay and image.ndim == 3 and image.shape[1] == 256
    x0, y0, x1, y1 = prediction.lesion.box
    # letterboxed at 32 px the ramp's bright end would be x1 = 32 and y1 <= 28 (content rows 4..27)
    assert (x1, 32 < x0 < 64, y1 > 40) == (64, True, True)
    assert caption == (f"{webapp.LESION_CAPTION}. Lesion score (the map's maximum) {prediction.lesion.score:.2f}; "
                       f"lesion box (p >= 0.50): x {x0}-{x1}, y {y0}-{y1} in the original image's pixels "
                       "(x1, y1 exclusive).")
    plain = webapp.predict_file(sample, layout=layout, variant="center")
    assert webapp.lesion_panel(plain) is None and plain.lesion_overlay is None and plain.lesion is None


def test_the_original_is_shown_at_the_overlays_size(layout):
    prediction = webapp.predict_file(webapp.held_out_images(layout, "center")[0].path, layout=layout, variant="center")
    original = webapp.original_panel(prediction)
    assert original.shape == prediction.overlay.shape and original.dtype == np.uint8


@pytest.mark.parametrize("shape,expected", [((2000, 1000), (1024, 512)), ((100, 3000, 3), (34, 1024, 3)),
                                             ((48, 64), (48, 64))])
def test_thumbnails_cap_the_long_side_and_keep_the_aspect(shape, expected):
    image = np.full(shape, 7, dtype=np.uint8)
    small = webapp.thumbnail(image)
    assert small.shape == expected and small.dtype == np.uint8 and int(small.max()) == 7
    assert small is not image


def test_a_thumbnail_needs_a_positive_size():
    with pytest.raises(ValueError, match=r"max_side must be >= 1 px, got 0"):
        webapp.thumbnail(np.zeros((4, 4), dtype=np.uint8), max_side=0)


@pytest.mark.parametrize(
    "value,text",
    [
        (ci(0.81234, 0.7, 0.9), "0.812 (0.700–0.900)"),
        ({"value": 0.5, "ci_low": None, "ci_high": None}, "0.500 (no interval)"),
        ({"value": 0.5, "ci_low": 0.2, "ci_high": 0.8, "interval": "wilson", "n": 6}, "0.500 (0.200–0.800, Wilson, n=6)"),
        ({"value": None, "ci_low": None, "ci_high": None}, "n/a"),
        (float("nan"), "n/a"),
        (None, "n/a"),
        (2, "2.000"),
    ],
)
def test_format_ci_writes_value_and_interval_as_the_report_does(value, text):
    from assurexray.core.rendering import fmt_ci

    assert webapp.format_ci(value) == text
    if isinstance(value, dict) and value.get("value") is not None:
        assert text == fmt_ci(value)


def test_missing_results_name_the_files_and_the_command(tmp_path):
    results = webapp.load_results(webapp.Layout(tmp_path))
    assert not results.any and len(results.missing) == 5
    assert webapp.missing_message(results) == (
        f"No pipeline results yet under {tmp_path}: metrics/stratified/eval/metrics.json, "
        "metrics/stratified/explain/metrics.json, metrics/center/eval/metrics.json and 2 more. "
        "Run `dvc repro` there to create them."
    )


def test_results_tables_put_the_variants_side_by_side(tmp_path):
    results = webapp.load_results(webapp.Layout(write_results(tmp_path)))
    assert results.any and results.missing == [] and webapp.missing_message(results) == ""
    assert webapp.headline_rows(results) == [
        {"metric": "Macro AUC (one-vs-rest)", "stratified": "0.900 (0.800–0.950)", "center": "0.700 (0.600–0.750)",
         "gap (stratified - center)": "0.200 (0.050–0.350)"},
        {"metric": "Accuracy", "stratified": "0.600 (0.500–0.700)", "center": "0.600 (0.500–0.700)",
         "gap (stratified - center)": "n/a"},
    ]
    threshold = webapp.operating_point_rows(results)[0]
    assert threshold == {"quantity": "Threshold on P(Malignant), chosen on validation", "stratified": "0.250",
                         "center": "0.250"}
    assert webapp.calibration_rows(results)[2] == {"quantity": "ece_after", "stratified": "0.050", "center": "0.050"}
    assert webapp.localization_rows(results) == [{
        "metric": "pointing_game", "stratified Grad-CAM": "0.500 (0.300–0.700)",
        "stratified baseline": "0.400 (0.200–0.600)", "center Grad-CAM": "0.500 (0.300–0.700)",
        "center baseline": "0.400 (0.200–0.600)",
    }]
    roc = dict(webapp.figure_pairs(results))["ROC curves (one-vs-rest, test)"]
    assert roc == {"stratified": tmp_path / "plots" / "stratified" / "eval" / "roc.png", "center": None}


def test_the_operating_point_table_says_how_each_threshold_was_chosen_and_carries_an_unreliable_ones_caveat(
        tmp_path):
    root = write_results(tmp_path, threshold_records={"stratified": RELIABLE, "center": UNRELIABLE})
    results = webapp.load_results(webapp.Layout(root))
    rows = webapp.operating_point_rows(results)
    assert [r["quantity"] for r in rows[:3]] == ["Threshold on P(Malignant), chosen on validation", "How chosen",
                                                 "Threshold caveat"]
    assert rows[1] == {
        "quantity": "How chosen",
        "stratified": "reliable: the lower confidence bound of validation sensitivity reaches the target",
        "center": "UNRELIABLE: too few validation Malignant images; fallback rule (see below)"}
    assert rows[2] == {"quantity": "Threshold caveat", "stratified": "none", "center": CAVEAT}
    assert webapp.threshold_caveats(results) == [f"Centre hold-out: {CAVEAT}"]
    unrecorded = webapp.load_results(webapp.Layout(write_results(tmp_path / "old")))
    assert webapp.operating_point_rows(unrecorded)[1:3] == [
        {"quantity": "How chosen", "stratified": "not recorded", "center": "not recorded"},
        {"quantity": "Threshold caveat", "stratified": "n/a", "center": "n/a"}]
    assert webapp.threshold_caveats(unrecorded) == []


def test_a_corrupt_metrics_file_is_named(tmp_path):
    path = tmp_path / "metrics" / "compare.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"compare.json: not valid JSON .*run `dvc repro`"):
        webapp.load_results(webapp.Layout(tmp_path))


def test_streamlit_config_sends_no_telemetry_and_caps_uploads():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO_ROOT / "app" / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["maxUploadSize"] == webapp.MAX_UPLOAD_MB


# --- the app through AppTest ----------------------------------------------------------------------------


def test_an_empty_root_shows_the_banner_and_the_command_on_both_views(tmp_path, monkeypatch):
    at = run_app(tmp_path, monkeypatch)
    assert DISCLAIMER in at.error[0].value
    assert any(text.startswith("No trained model in this project's models/ folder") for text in texts(at, "warning"))
    assert not any(str(tmp_path) in text for text in texts(at, "warning"))  # no server path on the page
    assert [c.value for c in at.code] == ["dvc repro"]
    at.sidebar.radio(key="page").set_value("Results").run()
    assert DISCLAIMER in at.error[0].value
    assert any(text.startswith("No pipeline results yet") for text in texts(at, "info"))
    assert [c.value for c in at.code] == ["dvc repro"]


def test_a_test_image_gets_both_answers_labelled_and_the_synthetic_notice(project, monkeypatch):
    at = run_app(project, monkeypatch)
    at.radio(key="source").set_value("Test image").run()
    assert not at.exception
    assert at.selectbox(key="sample").value.path.name == "IMG000002.jpeg"  # the stratified TEST image only
    assert at.selectbox(key="sample").options == [
        "IMG000002.jpeg (test partition of the stratified split, true label Malignant)"]
    table = at.table[0].value
    probs = table["probability"].astype(float)
    assert list(table.index) == CLASSES and math.isclose(probs.sum(), 1.0, abs_tol=2e-4)
    predicted = table.index[int(np.argmax(probs))]
    decision, top = (h.value for h in at.subheader[0:2])
    assert decision.startswith("Malignant flag at the operating point:") and "0.300)" in decision
    assert top.startswith(f"Most probable class (argmax): {predicted} (p = ")
    assert any(text.startswith("Trained on the built-in SYNTHETIC sample") for text in texts(at, "warning"))
    assert any(text.startswith("Malignant flag when P(Malignant) >= 0.300: a threshold chosen on the validation "
                               "partition of the stratified split") for text in texts(at, "caption"))
    captions = [c for image in at.get("image") for c in image.captions]
    assert captions == ["IMG000002.jpeg (decoded, grayscale)",
                        "Grad-CAM of the most probable class (colour bar: relative, min-max scaled per image)"]


@pytest.mark.parametrize("reliable", [False, True], ids=["unreliable", "reliable"])
def test_an_unreliable_threshold_is_shown_as_a_warning_led_by_its_caveat(tmp_path, monkeypatch, reliable):
    at = run_app(build_project(tmp_path, threshold_record=RELIABLE if reliable else UNRELIABLE), monkeypatch)
    at.radio(key="source").set_value("Test image").run()
    assert not at.exception
    threshold = "Malignant flag when P(Malignant) >= 0.300"
    warned = [t for t in texts(at, "warning") if threshold in t]
    captioned = [t for t in texts(at, "caption") if threshold in t]
    if reliable:
        assert warned == [] and len(captioned) == 1 and "UNRELIABLE" not in captioned[0]
    else:
        assert captioned == [] and len(warned) == 1 and warned[0].startswith(f"{CAVEAT} {threshold}")


def test_a_lesion_head_model_shows_the_lesion_map_only_with_its_caption(lesion_project, monkeypatch):
    at = run_app(lesion_project, monkeypatch)
    at.radio(key="source").set_value("Test image").run()
    assert not at.exception
    captions = [c for image in at.get("image") for c in image.captions]
    assert captions[:2] == ["IMG000002.jpeg (decoded, grayscale)",
                            "Grad-CAM of the most probable class (colour bar: relative, min-max scaled per image)"]
    (lesion,) = captions[2:]  # the map is shown, once, and its caption carries the words, the score and the box
    assert lesion.startswith(webapp.LESION_CAPTION + ". Lesion score (the map's maximum) 0.")
    assert "; lesion box (p >= 0.50): x " in lesion and "in the original image's pixels" in lesion


def test_a_bad_upload_shows_an_error_and_the_app_keeps_working(project, monkeypatch):
    at = run_app(project, monkeypatch)
    at.file_uploader(key="upload").set_value(("cine.dcm", dicom_bytes(np.zeros((2, 8, 8)), frames=2),
                                             "application/dicom")).run()
    assert not at.exception
    assert any("'cine.dcm': multi-frame DICOM" in text for text in texts(at, "error"))
    assert len(at.table) == 0
    at.file_uploader(key="upload").set_value(("ramp.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert not at.exception and len(at.error) == 1  # only the banner is left
    assert math.isclose(at.table[0].value["probability"].astype(float).sum(), 1.0, abs_tol=2e-4)


def test_the_results_view_shows_metrics_side_by_side(tmp_path, monkeypatch):
    at = run_app(write_results(tmp_path), monkeypatch, page="Results")
    headline = at.table[0].value
    assert headline.loc["Macro AUC (one-vs-rest)", "gap (stratified - center)"] == "0.200 (0.050–0.350)"
    assert list(headline.columns) == ["stratified", "center", "gap (stratified - center)"]
    assert any(c == "Stratified split (stratified)" for image in at.get("image") for c in image.captions)
    assert len(at.code) == 0 and texts(at, "warning") == [webapp.training_notices(webapp.Layout(tmp_path))[0].text]


def test_the_results_view_warns_of_each_unreliable_threshold(tmp_path, monkeypatch):
    root = write_results(tmp_path, threshold_records={"stratified": UNRELIABLE, "center": RELIABLE})
    at = run_app(root, monkeypatch, page="Results")
    table = at.table[1].value  # the operating point, after the headline
    assert table.loc["Threshold caveat", "stratified"] == CAVEAT and table.loc["Threshold caveat", "center"] == "none"
    assert [t for t in texts(at, "warning") if "UNRELIABLE" in t] == [f"Stratified split: {CAVEAT}"]


@pytest.mark.parametrize("page", ["Try a radiograph", "Results"])
@pytest.mark.parametrize("models", [True, False], ids=["models", "results-only"])
def test_every_page_says_what_trained_the_models_before_any_number(tmp_path, monkeypatch, page, models):
    root = write_results(build_project(tmp_path) if models else tmp_path)
    at = run_app(root, monkeypatch, page=page)
    shown = page_texts(at.main)
    expected = ("Stratified split model: Trained on the built-in SYNTHETIC sample" if models else
                "No trained model found, so what any result here was trained on cannot be checked")
    notice = next(i for i, text in enumerate(shown) if text.startswith(expected))
    first_number = next((i for i, text in enumerate(shown) if re.search(r"\d", text)), len(shown))  # none: fine
    assert notice <= first_number, shown[:first_number + 1]  # a model's notice holds the page's first digits
    if models:  # each model says its own; one without a record says so rather than borrowing another's
        assert "Its numbers and predictions say nothing about real patients." in shown[notice]
        assert shown[notice + 1].startswith("Centre hold-out model: Training data unknown")
    assert DISCLAIMER in shown[0]


def test_the_training_notice_comes_from_the_checkpoint_not_from_params(tmp_path):
    root = build_project(tmp_path)
    (root / "params.yaml").write_text("data:\n  source: btxrd\n", encoding="utf-8")  # must not be believed
    notices = {n.variant: n for n in webapp.training_notices(webapp.Layout(root))}
    assert notices["stratified"].warn and "SYNTHETIC" in notices["stratified"].text
    assert notices["center"].warn and "Training data unknown" in notices["center"].text
    (root / "models" / "center" / "model.pt").write_bytes(b"truncated")
    notices = {n.variant: n for n in webapp.training_notices(webapp.Layout(root))}
    assert notices["center"].text.startswith("Centre hold-out model: training data unknown (model.pt is not a "
                                             "readable checkpoint: ") and notices["center"].warn


def test_the_sidebar_shows_no_filesystem_path(project, monkeypatch):
    at = run_app(project, monkeypatch)
    shown = page_texts(at.sidebar)
    assert any(text.startswith("Privacy:") for text in shown)
    assert [t for t in shown if str(project) in t or re.search(r"(^|[\s`'\"(])/[\w.-]+/", t)] == []


def test_an_unfamiliar_upload_is_warned_before_its_scores_and_a_familiar_one_is_not(tmp_path, monkeypatch):
    at = run_app(with_input_check(build_project(tmp_path)), monkeypatch)
    at.file_uploader(key="upload").set_value(("noise.jpg", noise_jpeg(), "image/jpeg")).run()
    assert not at.exception
    shown = page_texts(at.main)
    warning = next(i for i, t in enumerate(shown) if fam.UNFAMILIAR_WARNING in t)
    decision = next(i for i, t in enumerate(shown) if t.startswith("Malignant flag at the operating point:"))
    assert warning < decision and shown[warning].startswith("This image is unlike the images this model was "
                                                            "trained on: its scores mean little here (input distance")
    at.file_uploader(key="upload").set_value(("ramp.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert not [t for t in texts(at, "warning") if fam.UNFAMILIAR_WARNING in t]
    assert any(t.startswith("Input check: this image is within the range") for t in texts(at, "caption"))


def test_a_model_without_an_input_check_says_so_and_still_predicts(layout):
    prediction = webapp.predict_upload("noise.jpg", noise_jpeg(), layout=layout, variant="stratified")
    assert prediction.outcome.input_distance is None and prediction.input_check_threshold is None
    warn, text = webapp.input_check_text(prediction)
    assert warn and text.startswith("No input check for this model (metrics/<variant>/eval/familiarity.npz absent)")
    assert math.isclose(sum(prediction.probs.values()), 1.0, abs_tol=1e-6)
