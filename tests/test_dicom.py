"""DICOM decoding: Modality LUT, VOI LUT / window, MONOCHROME1 inversion, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from assurexray.data.dicom import dicom_to_gray, is_dicom, read_dicom_gray

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def make_dicom(
    path: Path,
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    frames: int | None = None,
    preamble: bool = True,
    **attrs: object,
) -> Path:
    """Write a tiny uncompressed DICOM; ``stored`` None makes a non-image object (no PixelData)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE if stored is not None else BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if stored is not None else "SR"
    if stored is not None:
        bits_allocated = 8 if bits_stored <= 8 else 16
        ds.Rows, ds.Columns = stored.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = stored.astype("<u2" if bits_allocated == 16 else "u1").tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)
    return path


GRADIENT = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
# min..max stretch: 0, 1000/4000*255 = 63.75, 127.5, 255 (rounded half to even)
GRADIENT_8BIT = np.array([[0, 64], [128, 255]], dtype=np.uint8)


def test_monochrome2_16bit_without_window_is_stretched_min_to_max(tmp_path):
    gray = read_dicom_gray(make_dicom(tmp_path / "a.dcm", GRADIENT))
    assert gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, GRADIENT_8BIT)


def test_monochrome1_is_inverted_so_low_values_display_white(tmp_path):
    gray = read_dicom_gray(make_dicom(tmp_path / "a.dcm", GRADIENT, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(gray, 255 - GRADIENT_8BIT)


# Window centre 500.5, width 1001 (DICOM "LINEAR"): displayed fraction = modality value / 1000, clipped.
# Modality values -250, 0, 250, 500, 750, 1000 -> fractions 0, 0, .25, .5, .75, 1 -> 0, 0, 64, 128, 191, 255.
WINDOWED = np.array([[0, 0, 64, 128, 191, 255]], dtype=np.uint8)


@pytest.mark.parametrize(
    ("stored", "slope", "intercept"),
    [
        ([0, 250, 500, 750, 1000, 1250], 1, -250),
        ([0, 125, 250, 375, 500, 625], 2, -250),
        ([500, 750, 1000, 1250, 1500, 1750], 1, -750),
    ],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_rescale_slope_intercept_are_applied_before_the_window(tmp_path, stored, slope, intercept, photometric):
    path = make_dicom(
        tmp_path / "w.dcm",
        np.array([stored], dtype=np.uint16),
        photometric=photometric,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=500.5,
        WindowWidth=1001,
    )
    expected = WINDOWED if photometric == "MONOCHROME2" else 255 - WINDOWED
    np.testing.assert_array_equal(read_dicom_gray(path), expected)


def test_voi_lut_sequence_takes_precedence_over_the_window(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUT Descriptor: 4 entries, first input 0, 8-bit output
    item.add_new(0x00283006, "US", [0, 10, 20, 255])  # LUT Data
    path = make_dicom(
        tmp_path / "lut.dcm",
        np.array([[0, 1, 2, 3]], dtype=np.uint16),
        VOILUTSequence=Sequence([item]),
        WindowCenter=100,
        WindowWidth=3,
    )
    np.testing.assert_array_equal(read_dicom_gray(path), [[0, 10, 20, 255]])


def test_8bit_dicom_without_preamble_is_read_by_its_dcm_suffix(tmp_path):
    stored = np.array([[10, 60], [110, 210]], dtype=np.uint8)
    path = make_dicom(tmp_path / "plain.dcm", stored, bits_stored=8, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    # stretch 10..210 to 0..255: (v - 10) / 200 * 255
    np.testing.assert_array_equal(read_dicom_gray(path), [[0, 64], [128, 255]])


def test_dicom_is_recognised_by_content_or_suffix_and_other_files_are_not(tmp_path):
    no_suffix = make_dicom(tmp_path / "IM0001", GRADIENT)
    assert is_dicom(no_suffix)
    assert is_dicom(tmp_path / "anything.DCM")
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert not is_dicom(other)


def test_decoding_does_not_change_the_dataset(tmp_path):
    ds = pydicom.dcmread(
        make_dicom(tmp_path / "w.dcm", GRADIENT, RescaleSlope=2, RescaleIntercept=-5, WindowCenter=10, WindowWidth=20)
    )
    before = {key: ds[key].value for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")}
    pixels = ds.pixel_array.copy()
    dicom_to_gray(ds, pixels)
    assert {key: ds[key].value for key in before} == before
    np.testing.assert_array_equal(pixels, ds.pixel_array)


def test_multi_frame_dicom_is_rejected_naming_the_file(tmp_path):
    path = make_dicom(tmp_path / "cine.dcm", np.zeros((2, 4, 4), dtype=np.uint16), frames=2)
    with pytest.raises(ValueError, match=r"cine\.dcm: multi-frame DICOM with NumberOfFrames=2"):
        read_dicom_gray(path)


def test_dicom_without_pixel_data_is_rejected_as_not_an_image(tmp_path):
    path = make_dicom(tmp_path / "report.dcm", None)
    with pytest.raises(ValueError, match=r"report\.dcm: DICOM object has no pixel data .*not an image"):
        read_dicom_gray(path)


def test_dicom_over_the_pixel_limit_is_rejected(tmp_path):
    path = make_dicom(tmp_path / "big.dcm", np.zeros((4, 5), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"big\.dcm: image too large: 5x4 = 20 pixels exceeds max_pixels=19"):
        read_dicom_gray(path, max_pixels=19)


def test_corrupt_dicom_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10")
    with pytest.raises(ValueError, match=r"broken\.dcm: (not a readable DICOM file|DICOM object has no pixel data)"):
        read_dicom_gray(path)


def test_truncated_pixel_data_is_rejected_naming_the_file(tmp_path):
    path = make_dicom(tmp_path / "short.dcm", GRADIENT)
    ds = pydicom.dcmread(path)
    ds.Rows = 20  # claims 20x2 pixels but stores 4
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"short\.dcm: cannot decode the DICOM pixel data"):
        read_dicom_gray(path)


def test_missing_dicom_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.dcm: file not found"):
        read_dicom_gray(tmp_path / "nope.dcm")
