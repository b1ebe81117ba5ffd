"""Read single-frame DICOM radiographs as 8-bit grayscale, the way a viewer would display them.

The stored values are not display values: the Modality LUT (or rescale slope/intercept) maps them to
modality units, the VOI LUT (or window centre/width) picks the displayed range, and MONOCHROME1 means
"low values are white". Applying these in that order (DICOM PS3.4 Annex N) gives the image a
radiologist sees, which is what the model was trained on (8-bit exports of radiographs).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from assurexray.core.filetypes import DICOM_SUFFIXES
from assurexray.data.imaging import pixel_cap_error

__all__ = ["DICOM_SUFFIXES", "is_dicom", "read_dicom_gray", "read_dicom_bytes", "dicom_to_gray"]

logger = logging.getLogger(__name__)

#: File suffixes treated as DICOM even without the 128-byte preamble + "DICM" marker.
# DICOM_SUFFIXES (.dcm, .dicom) is stated in assurexray.core.filetypes with the other suffix lists.

#: Packages that give pydicom a decoder, per compressed transfer syntax (pydicom 3 "pixel data handlers").
_DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.80": "pyjpegls (pip install pyjpegls)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls (pip install pyjpegls)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)",  # JPEG 2000
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)",  # JPEG lossless SV1
}
_PREAMBLE_BYTES = 128
_MAGIC = b"DICM"


def is_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` has a DICOM suffix or carries the "DICM" marker after the 128-byte preamble."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _has_magic(path)


def read_dicom_gray(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a single-frame DICOM image at ``path`` to a uint8 (H, W) display image.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything that
    is not a decodable single-frame image (corrupt file, no pixel data, multi-frame, over ``max_pixels``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    # Without the preamble pydicom needs force=True; files named .dcm often lack it.
    return _read(path, label=path, force=not _has_magic(path), max_pixels=max_pixels)


def read_dicom_bytes(data: bytes, *, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an in-memory DICOM file (an upload) like :func:`read_dicom_gray`; errors name ``name``."""
    force = data[_PREAMBLE_BYTES:_PREAMBLE_BYTES + len(_MAGIC)] != _MAGIC
    return _read(io.BytesIO(data), label=name, force=force, max_pixels=max_pixels)


def _read(source: Path | io.BytesIO, *, label: Path | str, force: bool, max_pixels: int | None) -> np.ndarray:
    try:
        ds = pydicom.dcmread(source, force=force)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{label}: not a readable DICOM file ({type(err).__name__}: {err}).") from err
    _check_image_object(ds, path=label, max_pixels=max_pixels)
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError, TypeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax)
        plugin = _DECODER_PACKAGES.get(str(syntax), "the pydicom pixel-data plugin for this transfer syntax")
        reason = str(err).strip().splitlines()[0].rstrip(":. ") if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{label}: cannot decode the DICOM pixel data (transfer syntax {syntax_name!r}, UID {str(syntax)!r}): "
            f"{reason}. Install {plugin}, or export the image uncompressed."
        ) from err
    return dicom_to_gray(ds, pixels, name=str(label))


def dicom_to_gray(ds: Dataset, pixels: np.ndarray, *, name: str = "<dataset>") -> np.ndarray:
    """Map stored ``pixels`` of ``ds`` to uint8 (H, W): Modality LUT, VOI LUT/window, scale, MONOCHROME1 inversion.

    Without a VOI LUT or window, the image's own min..max is stretched to 0..255 (the common viewer
    default). ``pixels`` and ``ds`` are left unchanged.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 3 or pixels.ndim == 3:
        return _colour_to_gray(ds, pixels, name=name)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"{name}: unsupported PhotometricInterpretation {photometric!r} for a 1-sample image; "
            "expected 'MONOCHROME1' or 'MONOCHROME2'."
        )
    values = apply_modality_lut(pixels, ds)
    if _has_voi(ds):
        if ds.get("VOILUTSequence"):
            # VOI LUTs index by integer modality value; float input only triggers pydicom's warning.
            values = np.rint(values).astype(np.int64)
            probe = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], dtype=np.int64)
        else:
            probe = np.array([-1e12, 1e12], dtype=np.float64)
        displayed = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        # The window's output range (pydicom maps it onto the stored-bit range) is what 0..255 spans.
        ends = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
        low = min(float(ends.min()), float(displayed.min()))
        high = max(float(ends.max()), float(displayed.max()))
    else:
        displayed = np.asarray(values, dtype=np.float64)
        low, high = float(displayed.min()), float(displayed.max())
    gray = _scale_to_uint8(displayed, low, high)
    if photometric == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: the minimum value is displayed white
    return gray


def _check_image_object(ds: Dataset, *, path: Path | str, max_pixels: int | None) -> None:
    """Refuse objects that are not one decodable 2-D image, each with a message naming the file."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID", None)
        sop_name = getattr(sop, "name", sop)
        raise ValueError(
            f"{path}: DICOM object has no pixel data (SOP class {sop_name!r}, modality "
            f"{ds.get('Modality', None)!r}); it is not an image. Pass the radiograph image objects only."
        )
    frames = ds.get("NumberOfFrames", 1)
    frames = int(frames) if frames not in (None, "") else 1
    if frames > 1:
        raise ValueError(
            f"{path}: multi-frame DICOM with NumberOfFrames={frames}; only single-frame radiographs are "
            "supported. Export the frame to classify as its own file."
        )
    missing = [key for key in ("Rows", "Columns", "BitsAllocated") if key not in ds]
    if missing:
        raise ValueError(f"{path}: DICOM image lacks required attribute(s) {missing}; the file is incomplete.")
    if max_pixels is not None and int(ds.Rows) * int(ds.Columns) > max_pixels:
        raise pixel_cap_error(path, int(ds.Columns), int(ds.Rows), max_pixels)


def _has_voi(ds: Dataset) -> bool:
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    return bool(ds.get("VOILUTSequence")) or has_window


def _colour_to_gray(ds: Dataset, pixels: np.ndarray, *, name: str) -> np.ndarray:
    """ITU-R 601-2 luma of an RGB image (pydicom already converts YBR to RGB), scaled from its bit depth."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"{name}: expected colour pixels of shape (H, W, 3), got {pixels.shape}.")
    rgb = pixels.astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    top = float(2 ** int(ds.get("BitsStored", ds.get("BitsAllocated", 8))) - 1)
    return _scale_to_uint8(luma, 0.0, top)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map [low, high] to [0, 255] (rounded, clipped); a flat image maps to 0."""
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError(f"pixel value range [{low}, {high}] is not finite; the DICOM pixel data is corrupt.")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _has_magic(path: Path) -> bool:
    """The DICOM Part 10 marker: 128-byte preamble followed by b"DICM"."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_PREAMBLE_BYTES + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE_BYTES:] == _MAGIC
