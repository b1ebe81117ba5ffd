"""A new user's battery of bad inputs, made in code, over `infer`, the app's upload path, `fetch` and `prepare`.

Every case ends in exactly one of:
  (a) REFUSED: a ``ValueError`` (exit status 1 for `infer` rows, 2 for usage errors) whose message names the
      file / row / value and the fix;
  (b) TOLERATED: a documented tolerance, logged (the log line is asserted);
  (c) EXACT: the decoded result equals a reference computed here, pixel for pixel.
Image cases run twice: from a file (the `assurexray infer` path) and as an upload (the app), with the same message.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, generate_uid
from test_infer import tiny_checkpoint

from assurexray.serving import cli, webapp
from assurexray.data.annotations import read_labelme
from assurexray.data.btxrd import load_release, read_metadata
from assurexray.data.cache import PrepareConfig, build_cache, load_cache
from assurexray.data.fetch import extract_release, import_release
from assurexray.data.imaging import letterbox, polygons_to_letterbox, rasterize_polygons
from assurexray.data.decoding import read_gray, read_gray_bytes
from assurexray.serving.infer import run_inference
from assurexray.core.schema import RELEASE_COLUMNS

RAMP = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))  # (48, 64) gray ramp 0..252


# --- builders -------------------------------------------------------------------------------------------------


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def frames(fmt: str, n: int = 3, **options) -> bytes:
    """An ``n``-frame GIF/TIFF/WebP (frames differ, so frame 0 alone would be a silent choice)."""
    images = [Image.fromarray(np.full((32, 32), 60 * i, dtype=np.uint8)).convert("L" if fmt != "WEBP" else "RGB")
              for i in range(n)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose CRC-correct header claims ``width`` x ``height``: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(16))) + chunk(b"IEND", b"")


def exif_rotated_png() -> bytes:
    im = Image.fromarray(RAMP)
    exif = im.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


def nan_tiff() -> bytes:
    values = RAMP.astype(np.float32)
    values[3, 4] = np.nan
    return encode(values, "TIFF")


def rgba_png() -> bytes:
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., :3] = RAMP[..., None]
    rgba[:, 32:, 3] = 255  # left half transparent
    return encode(rgba, "PNG")


def dicom(stored: np.ndarray, *, photometric="MONOCHROME2", bits=12, syntax=ExplicitVRLittleEndian,
          fragments: list[bytes] | None = None, frames_: int | None = None, slope=None, intercept=None,
          pixels=True, cut=0) -> bytes:
    """A DICOM Part 10 file in memory: ``bits`` stored in 16, native or encapsulated (``fragments``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels:
        ds.Rows, ds.Columns = stored.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        if frames_:
            ds.NumberOfFrames = frames_
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if fragments is None:
            raw = stored.astype("<u2").tobytes()
            ds.PixelData = raw[: len(raw) - cut]
        else:
            ds.PixelData = encapsulate(fragments)
            ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


STORED12 = (np.tile(np.arange(64), (48, 1)) * 65).astype(np.uint16)  # 12-bit values 0..4095 in 16 bits


def stretch(values: np.ndarray) -> np.ndarray:
    """The documented display mapping of wide data: min..max linearly onto 0..255, rounded."""
    v = values.astype(np.float64)
    return np.round((v - v.min()) * 255.0 / (v.max() - v.min())).astype(np.uint8)


def j2k(stored: np.ndarray) -> bytes:
    return encode(stored, "JPEG2000", no_jp2=True)  # lossless (reversible 5/3 wavelet), raw codestream


# --- image cases: (a) refused with a message, (c) exact ------------------------------------------------------


@dataclass(frozen=True)
class ImageCase:
    name: str  # file name (its suffix selects the reader)
    data: Callable[[], bytes]
    refused: str | None = None  # regex of the message after "<name>: "
    reference: Callable[[], np.ndarray] | None = None  # expected uint8 (H, W)
    max_pixels: int = 100_000_000


IMAGE_CASES = {
    # (a) corrupt, truncated, wrong type, bomb-sized, NaN
    "text-named-png": ImageCase("notes.png", lambda: b"plain text, not pixels", refused=r"not a readable image"),
    "truncated-jpeg": ImageCase("cut.jpg", lambda: encode(RAMP, "JPEG")[:200],
                                refused=r"(unreadable or corrupt|not a readable) image"),
    "truncated-png": ImageCase("cut.png", lambda: encode(RAMP, "PNG")[:60],
                               refused=r"(unreadable or corrupt|not a readable) image"),
    "header-bomb": ImageCase("bomb.png", lambda: png_header(30_000, 30_000),
                             refused=r"image too large: 30000x30000 = 900000000 pixels exceeds max_pixels=100000000\. "
                                     r"Downsample it or raise --max-pixels"),
    "over-max-pixels": ImageCase("wide.png", lambda: encode(RAMP, "PNG"), max_pixels=3071,
                                 refused=r"image too large: 64x48 = 3072 pixels exceeds max_pixels=3071"),
    "nan-float-tiff": ImageCase("nan.tif", nan_tiff, refused=r"pixel array contains NaN or infinite values"),
    # (a) several frames: never scored on frame 0 without a word
    "multi-frame-gif": ImageCase("cine.gif", lambda: frames("GIF"), refused=r"multi-frame GIF with 3 frames; "
                                 r"only single-frame radiographs are supported .* Export the frame"),
    "multi-frame-tiff": ImageCase("stack.tif", lambda: frames("TIFF"), refused=r"multi-frame TIFF with 3 frames"),
    "animated-webp": ImageCase("anim.webp", lambda: frames("WEBP", lossless=True),
                               refused=r"multi-frame WEBP with 3 frames"),
    # (a) degenerate shapes
    "one-pixel": ImageCase("dot.png", lambda: encode(np.zeros((1, 1), np.uint8), "PNG"),
                           refused=r"degenerate image 1x1 px: the short side is below 16 px"),
    "sliver-10x4000": ImageCase("sliver.png", lambda: encode(np.zeros((4000, 10), np.uint8), "PNG"),
                                refused=r"degenerate image 10x4000 px: the short side is below 16 px"),
    "aspect-40x4000": ImageCase("strip.png", lambda: encode(np.zeros((4000, 40), np.uint8), "PNG"),
                                refused=r"degenerate image 40x4000 px: aspect ratio 100\.0 exceeds 10"),
    # (c) formats a hospital has, decoded exactly
    "exif-orientation": ImageCase("rot.png", exif_rotated_png, reference=lambda: np.rot90(RAMP, k=-1)),
    "12-bit-in-16-png": ImageCase("deep.png", lambda: encode(STORED12, "PNG"), reference=lambda: stretch(STORED12)),
    "16-bit-tiff": ImageCase("deep.tif", lambda: encode(STORED12 * 16, "TIFF"), reference=lambda: stretch(STORED12)),
    "single-frame-gif": ImageCase("one.gif", lambda: encode(RAMP, "GIF"), reference=lambda: RAMP),
    "lossless-webp": ImageCase("one.webp", lambda: encode(np.dstack([RAMP] * 3), "WEBP", lossless=True),
                               reference=lambda: RAMP),
    "bmp": ImageCase("one.bmp", lambda: encode(RAMP, "BMP"), reference=lambda: RAMP),
    "rgba-on-black": ImageCase("alpha.png", rgba_png, reference=lambda: np.where(np.arange(64) >= 32, RAMP, 0)),
    # DICOM: (c) exact display values, (a) refused objects
    "dicom-12-bit": ImageCase("chest.dcm", lambda: dicom(STORED12), reference=lambda: stretch(STORED12)),
    "dicom-monochrome1": ImageCase("inv.dcm", lambda: dicom(STORED12, photometric="MONOCHROME1"),
                                   reference=lambda: 255 - stretch(STORED12)),
    "dicom-rescaled": ImageCase("ct.dcm", lambda: dicom(STORED12, slope=2, intercept=-1024),
                                reference=lambda: stretch(STORED12 * 2.0 - 1024)),
    "dicom-jpeg2000": ImageCase("j2k.dcm", lambda: dicom(STORED12, syntax=JPEG2000Lossless, fragments=[j2k(STORED12)]),
                                reference=lambda: stretch(STORED12)),
    "dicom-jpeg-ls-no-decoder": ImageCase(
        "jls.dcm", lambda: dicom(STORED12, syntax=JPEGLSLossless, fragments=[b"\xff\xd8\xff\xf7\x00\x0b" + bytes(16)]),
        refused=r"cannot decode the DICOM pixel data \(transfer syntax 'JPEG-LS Lossless Image Compression', "
                r"UID '1\.2\.840\.10008\.1\.2\.4\.80'\).* Install pyjpegls \(pip install pyjpegls\)"),
    "dicom-multi-frame": ImageCase("cine.dcm", lambda: dicom(np.zeros((2, 32, 32)), frames_=2),
                                   refused=r"multi-frame DICOM with NumberOfFrames=2.*Export the frame"),
    "dicom-no-pixels": ImageCase("sr.dcm", lambda: dicom(STORED12, pixels=False),
                                 refused=r"DICOM object has no pixel data .* Pass the radiograph image objects only"),
    "dicom-truncated-pixels": ImageCase("short.dcm", lambda: dicom(STORED12, cut=100),
                                        refused=r"cannot decode the DICOM pixel data"),
    "dicom-degenerate": ImageCase("line.dcm", lambda: dicom(np.zeros((1, 400), np.uint16)),
                                  refused=r"degenerate image 400x1 px"),
}


@pytest.mark.parametrize("case", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_an_image_file_is_refused_by_name_or_decoded_exactly(case, tmp_path, caplog):
    path = tmp_path / case.name
    path.write_bytes(case.data())
    with caplog.at_level(logging.WARNING):
        if case.refused:
            with pytest.raises(ValueError, match=rf"^{path}: {case.refused}") as info:
                read_gray(path, max_pixels=case.max_pixels)
            assert "Traceback" not in str(info.value)
        else:
            np.testing.assert_array_equal(read_gray(path, max_pixels=case.max_pixels), case.reference())
    assert not [r for r in caplog.records if r.name.startswith(("pydicom", "PIL"))]  # no library noise leaks


@pytest.mark.parametrize("case", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_an_upload_gets_the_same_outcome_and_message_as_the_file(case, tmp_path):
    data = case.data()
    if case.refused:
        path = tmp_path / case.name
        path.write_bytes(data)
        with pytest.raises(ValueError) as from_file:
            read_gray(path, max_pixels=case.max_pixels)
        with pytest.raises(ValueError, match=rf"^'{case.name}': {case.refused}") as from_upload:
            webapp.decode_upload(case.name, data, max_pixels=case.max_pixels)
        assert str(from_upload.value).removeprefix(repr(case.name)) == str(from_file.value).removeprefix(str(path))
    else:
        np.testing.assert_array_equal(webapp.decode_upload(case.name, data, max_pixels=case.max_pixels),
                                      case.reference())


def test_max_pixels_can_be_raised_above_pils_own_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's limit below the image (3072 px)...
    path = tmp_path / "ramp.png"
    path.write_bytes(encode(RAMP, "PNG"))
    np.testing.assert_array_equal(read_gray(path, max_pixels=5000), RAMP)  # ...the user's limit is the one
    np.testing.assert_array_equal(read_gray_bytes(path.read_bytes(), name="r.png", max_pixels=5000), RAMP)
    assert Image.MAX_IMAGE_PIXELS == 1000  # and PIL's limit is restored afterwards


def test_an_upload_over_the_size_limit_is_refused_and_the_limit_is_stated():
    with pytest.raises(ValueError, match=r"'big.png': 2\.0 MB exceeds the upload limit of 1 MB; downscale"):
        webapp.decode_upload("big.png", bytes(2 * 1024 * 1024), max_mb=1)
    assert f"at most {webapp.MAX_UPLOAD_MB} MB" in webapp.UPLOAD_LABEL


# --- infer command: folders, models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bad-inputs") / "models" / "tiny" / "model.pt")


def test_a_folder_names_unsupported_image_types_and_logs_other_files(model_path, tmp_path, caplog, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(RAMP, "PNG"))
    (folder / "b.webp").write_bytes(encode(np.dstack([RAMP] * 3), "WEBP", lossless=True))
    (folder / "c.jp2").write_bytes(encode(RAMP, "JPEG2000"))
    (folder / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "notes.txt").write_text("ward round")
    with caplog.at_level(logging.WARNING, logger="assurexray.data.decoding"):
        code = cli.main(["infer", str(folder), "--model", str(model_path)])
    assert code == 1  # documented: 1 when any input failed, the rest still scored
    err = capsys.readouterr().err
    assert f"{folder / 'c.jp2'}: unsupported image type '.jp2'; convert it to PNG or TIFF" in err
    assert f"{folder / 'd.heic'}: unsupported image type '.heic'" in err
    assert "2 image(s) classified, 2 failed." in err
    assert any("skipped 1 non-image file(s) (e.g. ['notes.txt'])" in r.getMessage() for r in caplog.records)


def unsafe_model(path: Path) -> Path:
    import torch

    torch.save(torch.nn.Linear(2, 3), path)  # a pickled module: loading it would run code
    return path


def truncated_model(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda p, src: unsafe_model(p), r"refused to load: the file holds objects other than tensors .* No code from it "
                                      r"was run"),
    (truncated_model, r"not a readable checkpoint \(RuntimeError: PytorchStreamReader failed reading zip archive"),
    (lambda p, src: p.write_bytes(b"") and p, r"not a readable checkpoint \(EOFError: unexpected end of file\)"),
    (lambda p, src: p.write_text("{}") and p, r"not a readable checkpoint|not a torch checkpoint|refused to load"),
], ids=["pickled-module", "truncated", "empty", "text"])
def test_a_bad_model_file_is_one_error_line_with_exit_2_and_no_torch_advice(model_path, tmp_path, capsys, make,
                                                                          message):
    bad = tmp_path / "model.pt"
    make(bad, model_path)
    image = tmp_path / "a.png"
    image.write_bytes(encode(RAMP, "PNG"))
    assert cli.main(["infer", str(image), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"assurexray infer: error: {bad}: ")
    assert re.search(message, lines[0])
    assert "weights_only" not in err and "Traceback" not in err


# --- prepare: metadata sheets ---------------------------------------------------------------------------------


def sheet_rows(n: int = 3) -> pd.DataFrame:
    """``n`` Normal rows in the release's 37 columns."""
    rows = []
    for i in range(n):
        row = {c: 0 for c in RELEASE_COLUMNS}
        row.update(image_id=f"IMG{i + 1:06d}.jpeg", center=1, age=30, gender="F", frontal=1)
        rows.append(row)
    return pd.DataFrame(rows)


def csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def xlsx_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_excel(buffer, index=False)
    return buffer.getvalue()


def edited(**cells) -> pd.DataFrame:
    """Three Normal rows with ``cells`` = {"<column>_<row index>": value} changed (object dtype, any value)."""
    table = sheet_rows().astype(object)
    for key, value in cells.items():
        column, row = key.rsplit("_", 1)
        table.loc[int(row), column] = value
    return table


SHEET_CASES = {
    # (a) wrong format
    "csv-named-xlsx": ("dataset.xlsx", lambda: csv_bytes(sheet_rows()),
                       r"dataset.xlsx: cannot read the metadata sheet as \.xlsx \(BadZipFile: .*\)\. The file's content "
                       r"looks like \.csv, not \.xlsx\. Re-save it"),
    "xlsx-named-csv": ("dataset.csv", lambda: xlsx_bytes(sheet_rows()),
                       r"dataset.csv: cannot read the metadata sheet as \.csv .*looks like \.xlsx, not \.csv"),
    "legacy-xls-named-xlsx": ("dataset.xlsx", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),
                              r"dataset.xlsx: cannot read the metadata sheet as \.xlsx .*looks like \.xls, not \.xlsx"),
    "empty-csv": ("dataset.csv", lambda: b"", r"dataset.csv: cannot read the metadata sheet as \.csv \(EmptyDataError"),
    "truncated-xlsx": ("dataset.xlsx", lambda: xlsx_bytes(sheet_rows())[:300],
                       r"dataset.xlsx: cannot read the metadata sheet as \.xlsx \(BadZipFile"),
    # (a) blank and non-binary flags
    "blank-flag": ("dataset.csv", lambda: csv_bytes(edited(benign_1=None)),
                   r"dataset.csv row 3: flag 'benign' is blank; every flag must be 0 or 1 .* Fill it in or drop the row"),
    "flag-2": ("dataset.csv", lambda: csv_bytes(edited(malignant_0=2)),
               r"dataset.csv row 2: flag 'malignant' must be 0 or 1, got 2"),
    "flag-yes": ("dataset.xlsx", lambda: xlsx_bytes(edited(tumor_2="yes")),
                 r"dataset.xlsx row 4: flag 'tumor' must be 0 or 1, got 'yes'"),
    "flag-half": ("dataset.csv", lambda: csv_bytes(edited(frontal_1=0.5)),
                  r"dataset.csv row 3: flag 'frontal' must be 0 or 1, got 0\.5"),
    # (a) duplicate ids, also differing in case or suffix only
    "duplicate-id": ("dataset.csv", lambda: csv_bytes(edited(image_id_2="IMG000001.jpeg")),
                     r"dataset.csv rows \[2, 4\]: image_id 'IMG000001.jpeg' appears 2 times"),
    "duplicate-id-case": ("dataset.xlsx", lambda: xlsx_bytes(edited(image_id_1="img000001.JPEG")),
                          r"dataset.xlsx rows \[2, 3\]: image_ids \['IMG000001.jpeg', 'img000001.JPEG'\] name the same "
                          r"image file \(ids match files case-insensitively, suffix ignored\).*Keep one row per image"),
    "duplicate-id-suffix": ("dataset.csv", lambda: csv_bytes(edited(image_id_1="IMG000001.jpg")),
                            r"rows \[2, 3\]: image_ids \['IMG000001.jpeg', 'IMG000001.jpg'\] name the same image file"),
    "blank-id": ("dataset.csv", lambda: csv_bytes(edited(image_id_1=None)),
                 r"dataset.csv row 3: 'image_id' is blank\. Fill it in or drop the row"),
}


@pytest.mark.parametrize(("name", "data", "message"), SHEET_CASES.values(), ids=SHEET_CASES.keys())
def test_a_bad_sheet_is_refused_naming_the_file_row_and_value(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(ValueError, match=message):
        read_metadata(path)


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_a_good_sheet_in_either_format_reads_the_same_labels(tmp_path, fmt):
    table = edited(tumor_1=1, benign_1=1, tumor_2=1, malignant_2=1)
    path = tmp_path / f"dataset.{fmt}"
    path.write_bytes(csv_bytes(table) if fmt == "csv" else xlsx_bytes(table))
    assert read_metadata(path)["label"].tolist() == ["Normal", "Benign", "Malignant"]


# --- prepare: annotation geometry -----------------------------------------------------------------------------


def release(root: Path, *, image_size=(64, 48), json_size=(64, 48), points=None) -> Path:
    """A one-tumour release: an image of ``image_size`` and its annotation drawn on ``json_size``."""
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    w, h = image_size
    Image.fromarray(np.tile(np.arange(w, dtype=np.uint8), (h, 1))).save(root / "images" / "IMG000001.png")
    points = points or [[8, 8], [40, 8], [40, 30], [8, 30]]
    shapes = [{"label": "x", "shape_type": "polygon", "points": points}]
    (root / "Annotations" / "IMG000001.json").write_text(json.dumps(
        {"shapes": shapes, "imageWidth": json_size[0], "imageHeight": json_size[1], "imageData": None}))
    table = edited(tumor_0=1, benign_0=1).iloc[:1].assign(image_id="IMG000001.png")
    (root / "dataset.csv").write_bytes(csv_bytes(table))
    return root


def test_an_annotation_outside_its_image_is_refused_naming_the_shape_and_point(tmp_path):
    root = release(tmp_path / "raw", points=[[8, 8], [40, 8], [90, 30], [8, 30]])
    with pytest.raises(ValueError, match=r"IMG000001.json: shape 0 \(polygon\) has 1 point\(s\) outside the 64x48 "
                                         r"image it was drawn on, e.g. \(90, 30\).*Re-draw it in LabelMe"):
        read_labelme(root / "Annotations" / "IMG000001.json", image_size=(64, 48))


@pytest.mark.parametrize(("image_size", "json_size", "points", "log", "meta_key"), [
    ((32, 24), (64, 48), None, "have another size than their annotation, same aspect", "n_rescaled_annotations"),
    ((64, 48), (64, 48), [[-1, 8], [40, 8], [40, 30], [8, 48.5]],
     "2 annotation point(s) of 1 image(s) lay just outside the image", "n_clipped_annotation_points"),
], ids=["resized-copy", "border-clicks"])
def test_a_resized_or_border_clicked_annotation_is_mapped_exactly_and_logged(tmp_path, caplog, image_size,
                                                                           json_size, points, log, meta_key):
    root = release(tmp_path / "raw", image_size=image_size, json_size=json_size, points=points)
    with caplog.at_level(logging.WARNING, logger="assurexray.data.cache"):
        out = build_cache(load_release(root), tmp_path / "prepared",
                          PrepareConfig(image_px=32, near_duplicate_distance=0, workers=1))
    assert any(log in r.getMessage() for r in caplog.records)
    cache = load_cache(out)
    assert cache.meta[meta_key] in (1, 2)
    # Reference: the JSON's polygon scaled to the image, clipped to it, mapped into the letterbox.
    ann = read_labelme(root / "Annotations" / "IMG000001.json", image_size=image_size)
    _, geom = letterbox(np.zeros(image_size[::-1], np.uint8), 32)
    expected = rasterize_polygons(polygons_to_letterbox(ann.polygons, geom), 32, 32)
    np.testing.assert_array_equal(cache.masks[0], expected)


# --- fetch: archives and folders ------------------------------------------------------------------------------


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def release_files(**extra: bytes) -> dict[str, bytes]:
    files = {"BTXRD/images/IMG000001.jpeg": encode(RAMP, "JPEG"), "BTXRD/dataset.csv": csv_bytes(sheet_rows(1))}
    files.update(extra)
    return files


def corrupt_member(data: bytes, member: str) -> bytes:
    """Flip bytes inside ``member``'s compressed data: the zip's central directory stays valid."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    blob = bytearray(data)
    for i in range(start + 2, start + min(info.compress_size, 40)):
        blob[i] ^= 0xFF
    return bytes(blob)


FETCH_CASES = {
    "zip-slip": (lambda: zip_of(release_files(**{"BTXRD/../../evil.sh": b"rm -rf /"})),
                 r"unsafe member path 'BTXRD/\.\./\.\./evil\.sh'; refusing to extract"),
    "absolute-member": (lambda: zip_of(release_files(**{"/etc/passwd": b"x"})), r"unsafe member path '/etc/passwd'"),
    "not-a-zip": (lambda: b"PK but not really a zip", r"not a zip archive; give BTXRD\.zip or the extracted"),
    "no-btxrd-root": (lambda: zip_of({"images/IMG000001.jpeg": b"x"}),
                      r"no top-level BTXRD/ folder in the archive .* this is not the BTXRD release zip"),
    "corrupt-member": (lambda: corrupt_member(zip_of(release_files()), "BTXRD/images/IMG000001.jpeg"),
                       r"member 'BTXRD/images/IMG000001\.jpeg' is corrupt .* nothing was extracted"),
    "no-sheet": (lambda: zip_of({"BTXRD/images/IMG000001.jpeg": b"x"}),
                 r"no dataset sheet \(dataset\.xlsx or dataset\.csv\) beside images/"),
}


@pytest.mark.parametrize(("data", "message"), FETCH_CASES.values(), ids=FETCH_CASES.keys())
def test_a_bad_archive_is_refused_and_leaves_no_partial_output(tmp_path, data, message):
    archive = tmp_path / "BTXRD.zip"
    archive.write_bytes(data())
    out = tmp_path / "raw"
    with pytest.raises(ValueError, match=message):
        extract_release(archive, out)
    assert not out.exists() and not (tmp_path.parent / "evil.sh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BTXRD.zip"]  # no temp folder left behind


def test_a_resized_folder_keeps_every_image_type_prepare_reads_and_warns_about_the_rest(tmp_path, caplog):
    source = tmp_path / "BTXRD"
    (source / "images").mkdir(parents=True)
    tif = encode(RAMP, "TIFF")
    (source / "images" / "IMG000001.tif").write_bytes(tif)
    (source / "images" / "IMG000002.webp").write_bytes(encode(np.dstack([RAMP] * 3), "WEBP", lossless=True))
    (source / "images" / "readme.txt").write_text("copied by hand")
    (source / "dataset.csv").write_bytes(csv_bytes(sheet_rows(2)))
    with caplog.at_level(logging.INFO, logger="assurexray.data.fetch"):
        out = import_release(source, tmp_path / "raw", expected_size=None, expected_md5=None)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["IMG000001.tif", "IMG000002.webp"]
    assert (out / "images" / "IMG000001.tif").read_bytes() == tif  # byte for byte
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unexpected file in images/" in r.getMessage() and "readme.txt" in r.getMessage() for r in warned)


def test_run_inference_on_a_mixed_folder_scores_exactly_what_read_gray_decodes(model_path, tmp_path):
    """(c) for the batch path: the decode pool hands the model the same pixels as a single read."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for case in ("exif-orientation", "16-bit-tiff", "dicom-monochrome1", "one-pixel"):
        c = IMAGE_CASES[case]
        (folder / c.name).write_bytes(c.data())
    batched = run_inference([folder], model_path=model_path, batch_size=2)
    by_name = {Path(p.path).name: p for p in batched.predictions}
    assert "degenerate image 1x1" in by_name["dot.png"].error
    for name in ("rot.png", "deep.tif", "inv.dcm"):
        alone = run_inference([folder / name], model_path=model_path).predictions[0]
        assert by_name[name].probs == pytest.approx(alone.probs, abs=1e-6)  # batched conv: float rounding only
