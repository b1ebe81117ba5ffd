"""`assurexray infer`: inputs, decoding, temperature + operating point, outputs, bad files, Grad-CAM, lesion maps."""

from __future__ import annotations

import csv
import io
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from assurexray.serving import cli, infer
from assurexray.learning import model as model_lib
from assurexray.data.decoding import read_gray, read_gray_bytes
from assurexray.serving.infer import collect_inputs, run_inference
from assurexray.serving.infer_output import write_predictions
from assurexray.learning.prediction import default_operating_point_path, load_operating_point
from assurexray.learning.transforms import prepare_image

CLASSES = ["Normal", "Benign", "Malignant"]
COLUMNS = ["path", "prob_Normal", "prob_Benign", "prob_Malignant", "pred", "malignant_flag",
           "malignant_threshold", "malignant_threshold_reliable", "malignant_threshold_caveat", "model_sha256",
           "trained_on", "training_data_fingerprint", "input_distance", "input_unfamiliar", "error"]
#: How evaluate records a threshold chosen on too few validation Malignant images, and one chosen by the bound
#: (the keys assurexray.learning.calibration.choose_threshold fills in operating_point.json).
UNRELIABLE_REASON = ("chosen on 5 validation Malignant image(s), fewer than the 29 needed for a 95% lower confidence "
                     "bound on sensitivity to reach 0.90")
UNRELIABLE = {"val_positives": 5, "rule": "capped_point_estimate", "reliable": False, "reason": UNRELIABLE_REASON}
RELIABLE = {"val_positives": 40, "rule": "sensitivity_lower_bound", "reliable": True, "reason": None}
CAVEAT = f"UNRELIABLE Malignant threshold: {UNRELIABLE_REASON}."


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("repo") / "models" / "tiny" / "model.pt")


def tiny_checkpoint(path: Path, *, lesion_bias: float | None = None, input_size: int = 32) -> Path:
    """A tiny random timm model (32 px input) saved with the project's checkpoint contract; with ``lesion_bias``
    a format-2 checkpoint whose lesion decoder follows brightness (:func:`bright_lesion_model`)."""
    torch.manual_seed(0)
    lesion = lesion_bias is not None
    net = (bright_lesion_model(bias=lesion_bias) if lesion else
           model_lib.create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none"))
    meta = {
        "backbone": "test_efficientnet", "num_classes": 3, "class_names": CLASSES, "dropout": 0.0,
        "input_size": input_size, "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "clahe": False, "letterbox_fill": 0, "params": {}, "best_epoch": 0, "monitor": "macro_auc",
        "best_score": 0.5, "seed": 0, "format_version": model_lib.checkpoint_format(lesion_head=lesion),
        **({"lesion_head": True} if lesion else {}),
    }
    return model_lib.save_checkpoint(path, net, meta)


def bright_lesion_model(*, bias: float = -5.0) -> torch.nn.Module:
    """A test_efficientnet with a lesion decoder whose map follows image brightness, set by hand (no training).

    One channel carries the input's centre pixel through the stem, blocks 0-1 (the stride-4 features) and the
    decoder (identity batch norms, SiLU/ReLU): a white pixel (normalised 2.0) comes out at 1.23, anything below
    mid-grey at <= 0, so the lesion logit 10 * f + ``bias`` is +7.3 on bright areas and ``bias`` elsewhere.
    ``bias=-100`` gives a map of ~0 everywhere."""
    torch.manual_seed(0)
    net = model_lib.create_model("test_efficientnet", num_classes=3, dropout=0.0, pretrained="none",
                                 lesion_head=True)

    def centre_tap(conv: torch.nn.Conv2d) -> None:  # output channel 0 = input channel 0 at the kernel centre
        weight, k = torch.zeros_like(conv.weight), conv.weight.shape[-1] // 2
        weight[0, 0, k, k] = 1.0
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()

    def identity(bn: torch.nn.BatchNorm2d) -> None:  # eval-mode batch norm that passes its input through
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)

    block0, block1, decoder = net.blocks[0][0], net.blocks[1][0], net.lesion_decoder
    with torch.no_grad():
        for conv, bn in ((net.conv_stem, net.bn1), (block0.conv, block0.bn1), (block1.conv_exp, block1.bn1),
                         (block1.conv_pwl, block1.bn2), (decoder.fuse[0], decoder.fuse[1])):
            centre_tap(conv)
            identity(bn)
        for lateral in decoder.lateral:  # only the stride-4 level speaks
            lateral.weight.zero_()
            lateral.bias.zero_()
        decoder.lateral[0].weight[0, 0, 0, 0] = 1.0
        decoder.fuse[3].weight.zero_()
        decoder.fuse[3].weight[0, 0, 0, 0] = 10.0
        decoder.fuse[3].bias.fill_(bias)
    return net.eval()


def synthetic_checkpoint(path: Path) -> Path:
    """:func:`tiny_checkpoint` with the train stage's record of a model trained on the synthetic sample."""
    net, meta = model_lib.load_checkpoint(tiny_checkpoint(path))
    meta["data"] = {"source": "sample", "synthetic": True, "index_sha256": "ab" * 32, "n_images": 560,
                    "split": "stratified", "n_train": 390, "n_val": 85, "data_date": "2020-01-01"}
    return model_lib.save_checkpoint(path, net, meta)


def write_op(path: Path, model_path: Path, *, temperature=1.0, threshold=0.5, sha: str | None = None,
             record: dict | None = None) -> Path:
    """operating_point.json for ``model_path``; ``record`` adds how the threshold was chosen (:data:`UNRELIABLE`,
    :data:`RELIABLE`); without it the file predates the record, as an older evaluate wrote it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"temperature": temperature, "malignant_threshold": threshold, "target_sensitivity": 0.9,
            "val_sensitivity": 0.9, "model_sha256": sha or model_lib.file_sha256(model_path), **(record or {})}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def gradient(width=48, height=32) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def save_image(path: Path, array: np.ndarray | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient() if array is None else array).save(path, **kwargs)
    return path


def dicom_bytes(stored: np.ndarray, *, photometric="MONOCHROME2", frames=None, pixels=True) -> bytes:
    """A DICOM Part 10 file (12-bit) in memory; ``frames`` > 1 makes a multi-frame object, ``pixels`` False none."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if pixels:
        ds.Rows, ds.Columns = stored.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save_dicom(path: Path, stored: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(stored, **options))
    return path


def huge_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose (valid, CRC-correct) header claims ``width`` x ``height``: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit gray
    idat = zlib.compress(bytes(16))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def manual_probs(model_path: Path, gray: np.ndarray, temperature: float) -> np.ndarray:
    net, meta = model_lib.load_checkpoint(model_path)
    with torch.no_grad():
        logits = net(prepare_image(gray, meta)[None]).double()
    return torch.softmax(logits / temperature, dim=1)[0].numpy()


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- one image, probabilities, operating point ------------------------------------------------------------


def test_single_image_prints_a_table_with_its_prediction_and_exits_0(model_path, tmp_path, capsys):
    image = save_image(tmp_path / "one.png")
    assert cli.main(["infer", str(image), "--model", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "NOT FOR CLINICAL USE" in out
    row = next(line for line in out.splitlines() if line.startswith(str(image)))
    cells = row.split()
    assert cells[1] in CLASSES
    assert cells[-2] == "null"  # no operating point beside this model: no decision (as null in --output)
    assert cells[-1] == "unknown"  # this checkpoint records no training data, and the table says so
    assert sum(float(c) for c in cells[2:5]) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_probabilities_are_the_softmax_of_logits_divided_by_the_temperature(model_path, tmp_path, temperature):
    image = save_image(tmp_path / "g.png")
    op = write_op(tmp_path / "op.json", model_path, temperature=temperature)
    result = run_inference([image], model_path=model_path, operating_point_path=op)
    (pred,) = result.predictions
    expected = manual_probs(model_path, gradient(), temperature)
    np.testing.assert_allclose([pred.probs[c] for c in CLASSES], expected, rtol=1e-5, atol=1e-6)
    assert pred.pred == CLASSES[int(np.argmax(expected))]


@pytest.mark.parametrize(("offset", "flag"), [(-1e-3, 1), (1e-3, 0)], ids=["threshold-below", "threshold-above"])
def test_malignant_flag_is_prob_malignant_at_or_above_the_threshold(model_path, tmp_path, offset, flag):
    image = save_image(tmp_path / "g.png")
    threshold = float(manual_probs(model_path, gradient(), 1.0)[2]) + offset
    op = write_op(tmp_path / "op.json", model_path, threshold=threshold)
    result = run_inference([image], model_path=model_path, operating_point_path=op)
    assert result.predictions[0].malignant_flag == flag
    assert result.records()[0]["malignant_threshold"] == threshold


def test_operating_point_is_found_under_metrics_of_the_models_variant(model_path):
    root = model_path.parents[2]
    assert default_operating_point_path(model_path) == root / "metrics" / "tiny" / "eval" / "operating_point.json"


def test_default_operating_point_beside_the_model_is_applied(model_path, tmp_path):
    op = write_op(default_operating_point_path(model_path), model_path, threshold=0.0)
    try:
        result = run_inference([save_image(tmp_path / "g.png")], model_path=model_path)
    finally:
        op.unlink()
    assert result.predictions[0].malignant_flag == 1
    assert result.operating_point.source == op


def test_missing_operating_point_warns_and_leaves_the_decision_null(model_path, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="assurexray.serving.infer"):
        result = run_inference([save_image(tmp_path / "g.png")], model_path=model_path)
    assert "no operating point at" in caplog.text
    assert result.predictions[0].malignant_flag is None
    record = result.records()[0]
    assert (record["malignant_threshold"], record["malignant_threshold_reliable"],
            record["malignant_threshold_caveat"]) == (None, None, None)


def test_operating_point_of_another_model_is_refused(model_path, tmp_path, capsys):
    op = write_op(tmp_path / "op.json", model_path, sha="0" * 64)
    sha = model_lib.file_sha256(model_path)
    with pytest.raises(ValueError, match=rf"model_sha256 '0{{64}}' does not match the model file \(sha256 '{sha}'\)"):
        load_operating_point(op, model_sha256=sha, class_names=CLASSES)
    code = cli.main(["infer", str(save_image(tmp_path / "g.png")), "--model", str(model_path),
                     "--operating-point", str(op)])
    assert code == 2
    assert "chosen for another model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"temperature": 1.0, "model_sha256": "SHA"}, r"missing key\(s\) \['malignant_threshold'\]"),
        ({"temperature": 0.0, "malignant_threshold": 0.5, "model_sha256": "SHA"}, r"temperature must be > 0"),
        ({"temperature": 1.0, "malignant_threshold": 1.5, "model_sha256": "SHA"}, r"must lie in \[0, 1\], got 1\.5"),
        ({"temperature": "hot", "malignant_threshold": 0.5, "model_sha256": "SHA"},
         r"temperature must be a finite number, got 'hot'"),
        ([1, 2], r"expected a JSON object, got list"),
    ],
)
def test_malformed_operating_point_is_refused_naming_the_problem(model_path, tmp_path, content, message):
    sha = model_lib.file_sha256(model_path)
    text = json.dumps(content).replace('"SHA"', json.dumps(sha))
    op = tmp_path / "op.json"
    op.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_operating_point(op, model_sha256=sha, class_names=CLASSES)


def test_threshold_without_a_malignant_class_is_refused(model_path, tmp_path):
    sha = model_lib.file_sha256(model_path)
    op = write_op(tmp_path / "op.json", model_path)
    with pytest.raises(ValueError, match=r"needs a 'Malignant' class, but the checkpoint's classes are \['a', 'b'\]"):
        load_operating_point(op, model_sha256=sha, class_names=["a", "b"])


def test_explicit_operating_point_that_does_not_exist_is_a_usage_error(model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: operating point file not found"):
        run_inference([save_image(tmp_path / "g.png")], model_path=model_path,
                      operating_point_path=tmp_path / "nope.json")


# --- inputs and bad files -------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    folder = root / "batch"
    save_image(folder / "a.png")
    save_image(folder / "b.jpg", quality=90)
    save_image(folder / "sub" / "c.bmp")
    save_image(folder / "sub" / "d.tif", gradient().astype(np.uint16) * 200)  # 16-bit TIFF (I;16)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: never a radiograph
    return folder


def test_folder_with_a_bad_file_scores_the_good_ones_names_the_bad_one_and_exits_1(model_path, tmp_path, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "out.jsonl"
    code = cli.main(["infer", str(folder), "--model", str(model_path), "--output", str(out), "--batch-size", "3"])
    assert code == 1
    err = capsys.readouterr().err
    assert "1 of 5 inputs failed" in err
    assert f"{folder / 'broken.png'}: not a readable image (OSError: Truncated File Read)" in err
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert sorted(rows) == ["a.png", "b.jpg", "broken.png", "c.bmp", "d.tif"]  # not notes.txt nor ._a.png
    assert rows["broken.png"]["error"] and rows["broken.png"]["pred"] is None
    assert all(rows[n]["error"] is None and rows[n]["pred"] in CLASSES for n in ("a.png", "b.jpg", "c.bmp", "d.tif"))


def test_inputs_expand_folders_recursively_quoted_globs_and_drop_repeats(tmp_path):
    folder = make_folder(tmp_path)
    files, problems = collect_inputs([str(folder / "*.png"), str(folder / "a.png"), str(folder / "sub")])
    assert [f.name for f in files] == ["a.png", "broken.png", "c.bmp", "d.tif"]
    assert problems == []


def test_missing_paths_and_empty_globs_are_reported_not_dropped(tmp_path):
    files, problems = collect_inputs([str(tmp_path / "gone.png"), str(tmp_path / "*.dcm"), str(tmp_path)])
    assert files == []
    assert [p.error for p in problems] == [
        f"{tmp_path / 'gone.png'}: file not found.",
        f"{tmp_path / '*.dcm'}: no file matches this pattern.",
        f"{tmp_path}: folder holds no image files (.jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp, .gif, .dcm, .dicom, "
        "or DICOM by content).",
    ]


def test_no_matching_input_is_a_usage_error_with_exit_2(model_path, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"no image matched the inputs .*nothing-\*\.png: no file matches"):
        run_inference([str(tmp_path / "nothing-*.png")], model_path=model_path)
    assert cli.main(["infer", str(tmp_path / "nothing-*.png"), "--model", str(model_path)]) == 2
    assert "assurexray infer: error: no image matched" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"plain text, not pixels"), r"(not a readable image|unreadable or corrupt image)"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n"), r"(not a readable image|unreadable or corrupt image)"),
        (lambda p: huge_png_header(p, 20_000, 20_000), r"image too large: 20000x20000 = 400000000 pixels exceeds "
                                                        r"max_pixels=100000000"),
    ],
    ids=["wrong-type", "truncated", "decompression-bomb"],
)
def test_bad_files_are_refused_with_their_name_and_reason(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ValueError, match=rf"bad\.png: .*{message}"):
        read_gray(path, max_pixels=10**8)


def test_images_over_max_pixels_are_refused_before_decoding(tmp_path):
    image = save_image(tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"g\.png: image too large: 48x32 = 1536 pixels exceeds max_pixels=1535"):
        read_gray(image, max_pixels=1535)
    assert read_gray(image, max_pixels=1536).shape == (32, 48)


def test_dicom_inputs_are_classified_and_bad_dicoms_named(model_path, tmp_path):
    stored = (np.tile(np.arange(48), (32, 1)) * 80).astype(np.uint16)
    folder = tmp_path / "dicoms"
    save_dicom(folder / "mono1.dcm", stored, photometric="MONOCHROME1")
    save_dicom(folder / "1.2.840.99.7", stored)  # named by UID: found by its DICM marker
    save_dicom(folder / "cine.dcm", np.zeros((2, 8, 8)), frames=2)
    save_dicom(folder / "report.dcm", stored, pixels=False)
    result = run_inference([folder], model_path=model_path)
    by_name = {Path(p.path).name: p for p in result.predictions}
    assert sorted(by_name) == ["1.2.840.99.7", "cine.dcm", "mono1.dcm", "report.dcm"]
    assert by_name["mono1.dcm"].ok and by_name["1.2.840.99.7"].ok
    assert "cine.dcm: multi-frame DICOM with NumberOfFrames=2" in by_name["cine.dcm"].error
    assert "report.dcm: DICOM object has no pixel data" in by_name["report.dcm"].error
    # MONOCHROME1 is the inverted display of the same stored gradient
    np.testing.assert_array_equal(read_gray(folder / "mono1.dcm"), 255 - read_gray(folder / "1.2.840.99.7"))


# --- outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_file_has_the_documented_columns_and_probabilities_summing_to_1(model_path, tmp_path, suffix):
    folder = make_folder(tmp_path)
    op = write_op(tmp_path / "op.json", model_path, threshold=0.25)
    out = tmp_path / f"out{suffix}"
    code = cli.main(["infer", str(folder), "--model", str(model_path), "--operating-point", str(op),
                     "--output", str(out)])
    assert code == 1
    rows = read_rows(out)
    assert len(rows) == 5 and all(list(r) == COLUMNS for r in rows)
    sha = model_lib.file_sha256(model_path)
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4
    for r in good:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert r["pred"] == CLASSES[int(np.argmax(probs))]
        assert int(r["malignant_flag"]) == int(probs[2] >= 0.25)
        assert float(r["malignant_threshold"]) == 0.25 and r["model_sha256"] == sha
    assert not list(tmp_path.glob(".out*"))  # no temp file left behind


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize(("record", "reliable", "caveat"), [(UNRELIABLE, False, CAVEAT), (RELIABLE, True, None),
                                                            (None, None, None)],
                         ids=["unreliable", "reliable", "not-recorded"])
def test_output_files_say_whether_the_threshold_is_reliable_and_carry_an_unreliable_ones_caveat(
        model_path, tmp_path, suffix, record, reliable, caveat):
    op = write_op(tmp_path / "op.json", model_path, threshold=0.3, record=record)
    out = tmp_path / f"out{suffix}"
    assert cli.main(["infer", str(save_image(tmp_path / "g.png")), "--model", str(model_path),
                     "--operating-point", str(op), "--output", str(out)]) == 0
    (row,) = read_rows(out)
    names = list(row)
    assert names[names.index("malignant_threshold") + 1:][:2] == ["malignant_threshold_reliable",
                                                                 "malignant_threshold_caveat"]
    if suffix == ".csv":  # the same names, booleans spelt as in JSON, null as an empty cell
        assert row["malignant_threshold_reliable"] == {True: "true", False: "false", None: ""}[reliable]
        assert row["malignant_threshold_caveat"] == (caveat or "")
    else:
        assert row["malignant_threshold_reliable"] is reliable and row["malignant_threshold_caveat"] == caveat


def test_unsupported_output_suffix_is_refused_before_any_work(model_path, tmp_path, capsys):
    image = save_image(tmp_path / "g.png")
    # the model does not exist: the suffix error coming first shows nothing was loaded or scored
    assert cli.main(["infer", str(image), "--model", str(tmp_path / "no.pt"), "--output", str(tmp_path / "o.xlsx")]) == 2
    assert "o.xlsx': unsupported suffix; use a .jsonl or .csv file name" in capsys.readouterr().err
    result = run_inference([image], model_path=model_path)
    with pytest.raises(ValueError, match=r"out\.xlsx'?: unsupported suffix '\.xlsx'; use \.jsonl or \.csv"):
        write_predictions(result, tmp_path / "out.xlsx")


def test_interrupt_leaves_no_output_file(model_path, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path)
    calls = []

    def interrupt(path, *_args, **_kwargs):
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr("assurexray.serving.infer.read_for_letterbox", interrupt)
    out = tmp_path / "out.csv"
    assert cli.main(["infer", str(folder), "--model", str(model_path), "--output", str(out)]) == 130
    assert calls and not out.exists() and not list(tmp_path.glob(".out*"))
    assert "interrupted; no partial output was written" in capsys.readouterr().err


def test_gradcam_writes_one_overlay_per_image_with_the_disclaimer_banner_and_unique_names(model_path, tmp_path):
    save_image(tmp_path / "x" / "img.png")
    save_image(tmp_path / "y" / "img.png")  # same stem: must not overwrite the first overlay
    result = run_inference([tmp_path / "x", tmp_path / "y"], model_path=model_path, gradcam_dir=tmp_path / "cams")
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["img_2_gradcam.png", "img_gradcam.png"]
    assert set(result.gradcam_paths) == {p.path for p in result.predictions}
    overlay = np.asarray(Image.open(tmp_path / "cams" / "img_gradcam.png").convert("RGB"))
    # 48 x 32 is upscaled to a 256 px long side (256 x 171) so the banner stays legible; banner on top
    banner_rows = overlay.shape[0] - 171
    assert overlay.shape[1] == 256 and banner_rows > 0
    banner = overlay[:banner_rows]
    assert ((banner[..., 0] > 200) & (banner[..., 2] < 80)).any()  # yellow caption text drawn
    body = overlay[banner_rows:].astype(int)
    assert (np.abs(body[..., 0] - body[..., 2]) > 10).any()  # heatmap colour blended in


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_with_gradcam_each_row_names_its_overlay_file_and_a_failed_row_none(model_path, tmp_path, suffix):
    folder = make_folder(tmp_path)
    out = tmp_path / f"out{suffix}"
    code = cli.main(["infer", str(folder), "--model", str(model_path), "--gradcam", str(tmp_path / "cams"),
                     "--output", str(out)])
    assert code == 1
    rows = read_rows(out)
    assert all(list(r) == [*COLUMNS[:-1], "gradcam_overlay", "error"] for r in rows)
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4
    overlays = [Path(r["gradcam_overlay"]) for r in good]
    assert sorted(p.name for p in overlays) == sorted(p.name for p in (tmp_path / "cams").iterdir())
    for row, overlay in zip(good, overlays):
        assert overlay.is_file() and overlay.name == f"{Path(row['path']).stem}_gradcam.png"
    assert [r["gradcam_overlay"] in ("", None) for r in rows if r["error"]] == [True]


def test_gradcam_uses_the_layer_the_explain_stage_chose_for_this_model(tmp_path, monkeypatch):
    model_path = tiny_checkpoint(tmp_path / "models" / "v" / "model.pt")
    explain_metrics = tmp_path / "metrics" / "v" / "explain" / "metrics.json"
    assert infer.default_gradcam_layer(model_path) is None  # explain has not run: automatic layer
    explain_metrics.parent.mkdir(parents=True)
    explain_metrics.write_text(json.dumps({"target_layer": "blocks.3"}), encoding="utf-8")
    assert infer.default_gradcam_layer(model_path) == "blocks.3"
    used = []
    real = infer.compute_heatmaps
    monkeypatch.setattr(infer, "compute_heatmaps", lambda *a, **k: used.append(k["target_layer"]) or real(*a, **k))
    save_image(tmp_path / "img.png")
    infer.run_inference([tmp_path / "img.png"], model_path=model_path, gradcam_dir=tmp_path / "cams")
    assert used == ["blocks.3"]
    explain_metrics.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.json: not a valid explain metrics file"):
        infer.default_gradcam_layer(model_path)


# --- real data --------------------------------------------------------------------------------------------


def test_every_btxrd_mini_original_is_classified(model_path, btxrd_mini, tmp_path):
    out = tmp_path / "mini.jsonl"
    code = cli.main(["infer", str(btxrd_mini / "images"), "--model", str(model_path), "--output", str(out)])
    rows = read_rows(out)
    assert code == 0
    assert len(rows) == 30 and all(r["error"] is None for r in rows)
    assert all(sum(r[f"prob_{c}"] for c in CLASSES) == pytest.approx(1.0) for r in rows)


def test_in_memory_files_decode_exactly_like_the_same_files_on_disk(tmp_path):
    png = save_image(tmp_path / "ramp.png")
    dcm = save_dicom(tmp_path / "scan.dcm", (np.arange(32 * 24).reshape(24, 32) * 5) % 4096)
    for path in (png, dcm):
        from_bytes = read_gray_bytes(path.read_bytes(), name=path.name)
        assert np.array_equal(from_bytes, read_gray(path)), path.name
    bomb = huge_png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ValueError, match=r"upload\.png: image too large"):
        read_gray_bytes(bomb.read_bytes(), name="upload.png")
    with pytest.raises(ValueError, match=r"notes\.txt: not a readable image"):
        read_gray_bytes(b"plain text", name="notes.txt")


def test_predict_images_scores_arrays_like_run_inference_scores_files(model_path, tmp_path):
    path = save_image(tmp_path / "img.png")
    from_files = run_inference([path], model_path=model_path).predictions[0]
    result, overlays = infer.predict_images({"img": read_gray(path)}, model_path=model_path, gradcam=True)
    assert result.predictions[0].probs == pytest.approx(from_files.probs, abs=1e-12)
    assert overlays["img"].ndim == 3 and overlays["img"].shape[2] == 3 and overlays["img"].dtype == np.uint8
    with pytest.raises(ValueError, match=r"predict_images: no image given"):
        infer.predict_images({}, model_path=model_path)


def test_inference_averages_with_the_mirror_image_when_evaluate_did(model_path, tmp_path):
    """operating_point.json records tta_flip; infer must score as evaluate did, or the threshold means nothing."""
    from assurexray.learning.prediction import flip_averaged_logits
    from assurexray.learning.transforms import prepare_image

    image = gradient(32, 32)  # left-right asymmetric: its mirror scores differently
    path = save_image(tmp_path / "g.png", image)
    net, meta = model_lib.load_checkpoint(model_path)
    batch = prepare_image(image, meta)[None]
    with torch.inference_mode():
        plain, flipped = flip_averaged_logits(net, batch, tta_flip=False), flip_averaged_logits(net, batch,
                                                                                                  tta_flip=True)
        mirror = net(torch.flip(batch, dims=(3,))).float().numpy()
    np.testing.assert_allclose(flipped, (plain + mirror) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, mirror)
    op = write_op(tmp_path / "op.json", model_path)
    data = json.loads(op.read_text())
    op.write_text(json.dumps({**data, "tta_flip": True}))
    result = run_inference([path], model_path=model_path, operating_point_path=op)
    assert result.operating_point.tta_flip is True
    probs = np.exp(flipped[0]) / np.exp(flipped[0]).sum()
    np.testing.assert_allclose([result.predictions[0].probs[c] for c in CLASSES], probs, rtol=1e-5)


# --- what the model was trained on, and what the flag means --------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_every_row_says_the_model_was_trained_on_the_synthetic_sample(tmp_path, suffix, capsys):
    model = synthetic_checkpoint(tmp_path / "models" / "stratified" / "model.pt")
    images = [save_image(tmp_path / "in" / f"{i}.png") for i in range(2)]
    out = tmp_path / f"out{suffix}"
    assert cli.main(["infer", *map(str, images), "--model", str(model), "--output", str(out)]) == 0
    rows = read_rows(out)
    assert [(r["trained_on"], r["training_data_fingerprint"]) for r in rows] == [("synthetic-sample", "ab" * 32)] * 2
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith(str(tmp_path / "in"))]
    assert len(table) == 2 and all(line.split()[-1] == "synthetic-sample" for line in table)
    assert "Trained on the built-in SYNTHETIC sample" in printed and "abababababab" in printed
    assert "trained on SYNTHETIC images" in printed


def test_the_threshold_is_explained_with_validation_sensitivity_and_specificity(tmp_path, capsys):
    model = synthetic_checkpoint(tmp_path / "models" / "stratified" / "model.pt")
    op = write_op(tmp_path / "metrics" / "stratified" / "eval" / "operating_point.json", model, threshold=0.3)
    # validation rows: 4 Malignant (3 flagged), 5 others (1 flagged); the test row must be ignored
    rows = [("val", "Malignant", 1)] * 3 + [("val", "Malignant", 0)] + [("val", "Benign", 1)] + \
        [("val", "Normal", 0)] * 4 + [("test", "Normal", 1)]
    (op.parent / "predictions.csv").write_text(
        "partition,label,malignant_flag\n" + "".join(f"{p},{c},{f}\n" for p, c, f in rows), encoding="utf-8")
    image = save_image(tmp_path / "one.png")
    assert cli.main(["infer", str(image), "--model", str(model)]) == 0
    printed = capsys.readouterr().out
    assert ("Malignant flag when P(Malignant) >= 0.300: a threshold chosen on the validation partition of the "
            "stratified split to reach sensitivity >= 0.90; on validation, sensitivity 0.750 (4 Malignant images) "
            "and specificity 0.800 (5 other images).") in printed
    # 0.3 <= 1/3: every image with Malignant on top is flagged, and the header says so (and nothing about
    # sensitivity: this operating point does not record how its threshold was chosen)
    assert ("pred is the most probable class (argmax); malignant_flag is 1 for every image whose pred is Malignant, "
            "and can also be 1 while another class is on top.\n") in printed
    assert "sensitiv" not in printed.split("other images).", 1)[1]


def test_a_threshold_above_one_over_k_is_not_said_to_flag_every_image_with_malignant_on_top(model_path, tmp_path,
                                                                                            capsys):
    op = write_op(tmp_path / "op.json", model_path, threshold=0.5)  # written before the 1/K cap
    assert cli.main(["infer", str(save_image(tmp_path / "one.png")), "--model", str(model_path),
                     "--operating-point", str(op)]) == 0
    printed = capsys.readouterr().out
    assert ("malignant_flag is the separate operating-point decision (P(Malignant) >= 0.500): it can be 1 while "
            "another class is on top, and 0 while Malignant is on top.") in printed
    assert "set for every image" not in printed


# --- lesion maps (models with a lesion head) ---------------------------------------------------------------

#: A bright lesion on a dark 300 x 200 radiograph: x 150..239, y 60..139 (x1, y1 exclusive) in its own pixels.
LESION = (150, 60, 240, 140)
#: Lesion box tolerance, original px: the map is scored at stride 4 of a 64 px input (4.7 original px per
#: prepared px), so an edge lands within about one prepared pixel. Letterbox padding left in would shift y by
#: 10 prepared px = 46 original px, and letterboxed coordinates (x 32..51) miss by over 100.
BOX_TOLERANCE = 10


def lesion_image(path: Path) -> Path:
    array = np.full((200, 300), 40, dtype=np.uint8)
    x0, y0, x1, y1 = LESION
    array[y0:y1, x0:x1] = 255
    return save_image(path, array)


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("lesion") / "models" / "head" / "model.pt", lesion_bias=-5.0,
                           input_size=64)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_the_lesion_box_lands_on_the_bright_lesion_in_the_original_images_pixels(lesion_model, tmp_path, suffix,
                                                                                capsys):
    image = lesion_image(tmp_path / "in" / "knee.png")
    out, maps = tmp_path / f"out{suffix}", tmp_path / "maps"
    assert cli.main(["infer", str(image), "--model", str(lesion_model), "--output", str(out),
                     "--lesion-map", str(maps)]) == 0
    (row,) = read_rows(out)
    if suffix == ".csv":
        assert list(row) == [*COLUMNS[:-1], "lesion_score", "lesion_threshold", "lesion_box_x0", "lesion_box_y0",
                             "lesion_box_x1", "lesion_box_y1", "lesion_overlay", "error"]
        box = [int(row[f"lesion_box_{k}"]) for k in ("x0", "y0", "x1", "y1")]
    else:
        box = row["lesion_box"]
        assert {"lesion_box_x0", "lesion_box_y1"}.isdisjoint(row)  # JSON holds the box as one list
    assert np.abs(np.subtract(box, LESION)).max() <= BOX_TOLERANCE, box
    assert float(row["lesion_score"]) > 0.99 and float(row["lesion_threshold"]) == 0.5
    assert row["lesion_overlay"] == str(maps / "knee_lesion.png")
    overlay = np.asarray(Image.open(maps / "knee_lesion.png").convert("RGB")).astype(int)
    body = overlay[overlay.shape[0] - 200:]  # drawn at the original's 300 x 200 under the banner
    assert overlay.shape[1] == 300 and body[100, 195, 0] > body[100, 195, 2] and body[30, 50, 2] > body[30, 50, 0]
    printed = capsys.readouterr().out
    assert "wrote 1 lesion-map overlays to" in printed
    assert "lesion_score is the maximum of the model's lesion map" in printed


def test_a_dark_image_gets_an_empty_box_and_a_score_below_the_threshold(lesion_model, tmp_path):
    image = save_image(tmp_path / "dark.png", np.full((200, 300), 40, dtype=np.uint8))
    result = run_inference([image], model_path=lesion_model)
    (record,) = result.records()
    assert record["lesion_box"] is None and record["lesion_score"] < 0.5 == record["lesion_threshold"]


def test_a_model_without_a_lesion_head_writes_no_lesion_columns_and_refuses_lesion_map(model_path, tmp_path, capsys):
    image = save_image(tmp_path / "g.png")
    result = run_inference([image], model_path=model_path)
    assert result.columns() == COLUMNS and "lesion_box" not in result.records()[0]
    assert result.predictions[0].lesion is None
    assert cli.main(["infer", str(image), "--model", str(model_path), "--lesion-map", str(tmp_path / "maps")]) == 2
    assert (f"--lesion-map: {model_path} has no lesion decoder (trained without model.lesion_head: true)"
            in capsys.readouterr().err)
    assert not (tmp_path / "maps").exists()


def test_an_ensemble_averages_its_members_lesion_maps(lesion_model, tmp_path):
    image = lesion_image(tmp_path / "knee.png")
    blind = tiny_checkpoint(tmp_path / "blind.pt", lesion_bias=-100.0, input_size=64)  # its map is ~0 everywhere
    alone = run_inference([image], model_path=lesion_model).predictions[0].lesion
    both = run_inference([image], model_path=[lesion_model, blind]).predictions[0].lesion
    assert both.score == pytest.approx(alone.score / 2, abs=1e-4)  # the mean of ~1 and ~0 at the lesion
    assert both.box is None and alone.box is not None  # the mean (0.4997) stays under 0.5


def test_an_ensemble_with_a_member_without_a_lesion_head_writes_no_lesion_columns(lesion_model, tmp_path, caplog):
    plain = tiny_checkpoint(tmp_path / "plain.pt", input_size=64)
    with caplog.at_level(logging.WARNING, logger="assurexray.serving.lesion"):
        result = run_inference([lesion_image(tmp_path / "knee.png")], model_path=[lesion_model, plain])
    assert f"lesion map: off for this ensemble: ['{plain}'] has no lesion decoder" in caplog.text
    assert result.columns() == COLUMNS and result.predictions[0].lesion is None


def test_predict_images_draws_the_lesion_map_on_request_in_original_pixels(lesion_model, tmp_path):
    path = lesion_image(tmp_path / "knee.png")
    result, _ = infer.predict_images({"knee": read_gray(path)}, model_path=lesion_model, lesion_map=True)
    from_file = run_inference([path], model_path=lesion_model).predictions[0].lesion
    assert result.predictions[0].lesion == from_file
    assert result.lesion_overlays["knee"].shape[1] == 300
    plain, _ = infer.predict_images({"knee": read_gray(path)}, model_path=lesion_model)
    assert plain.lesion_overlays == {} and plain.predictions[0].lesion == from_file
