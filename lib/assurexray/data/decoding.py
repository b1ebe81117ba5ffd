"""Find radiograph files and read one file or upload to uint8 (H, W) under size caps: what ``assurexray infer``
and the app accept.

Raster files go through :mod:`assurexray.data.imaging`, DICOM through :mod:`assurexray.data.dicom`; both refuse more than
``max_pixels`` from the header, before decoding, with one message (:func:`assurexray.data.imaging.pixel_cap_error`).
Here degenerate shapes are refused too (a 1x1 or 10x4000 file is not a radiograph).
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from assurexray.data.dicom import is_dicom, read_dicom_bytes, read_dicom_gray
from assurexray.core.filetypes import DICOM_SUFFIXES, INFER_SUFFIXES
from assurexray.data.imaging import (
    UNSUPPORTED_IMAGE_SUFFIXES,
    Fitted,
    decode_bytes_for_letterbox,
    decode_for_letterbox,
    image_size,
)

__all__ = ["IMAGE_SUFFIXES", "DEFAULT_MAX_PIXELS", "MIN_SIDE_PX", "MAX_ASPECT", "find_images", "read_gray",
           "read_gray_bytes", "Fitted", "read_for_letterbox", "read_bytes_for_letterbox", "check_shape"]

logger = logging.getLogger(__name__)

#: Suffixes picked up when walking a folder (DICOM files without a suffix are found by content).
IMAGE_SUFFIXES: tuple[str, ...] = INFER_SUFFIXES

#: Refuse images above this many pixels (100 MP): a decompression bomb or a scan no radiograph needs.
#: It replaces PIL's own limit (89 MP), so ``--max-pixels`` can raise it.
DEFAULT_MAX_PIXELS = 100_000_000
#: Refuse images whose short side is below this, px: a 1x1 or 10x4000 file is not a radiograph, and
#: letterboxing would blow a few pixels up into an input the model was never shown.
MIN_SIDE_PX = 16
#: Refuse images whose long side exceeds this multiple of the short side (full-leg films are about 3.6).
MAX_ASPECT = 10.0
_GLOB_CHARS = frozenset("*?[")


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursive) and globs into image files, in a stable order.

    Returns (files, problems): an input that is missing, or a glob/folder that yields no image, becomes a
    problem ``(input, message naming it)``, so nothing asked for is silently dropped. Files given explicitly
    are kept whatever their suffix (reading them reports a wrong type); folder walks keep image suffixes
    and DICOM files recognised by content.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_dir():
            found, unsupported = _walk_images(path)
            problems.extend(unsupported)
            if not found and not unsupported:
                problems.append((text, f"{text}: folder holds no image files ({_suffix_hint()})."))
        elif path.exists():
            found = [path]
        elif _GLOB_CHARS & set(text):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                if Path(match).is_dir():
                    walked, unsupported = _walk_images(Path(match))
                    found.extend(walked)
                    problems.extend(unsupported)
                else:
                    found.append(Path(match))
            if not found:
                problems.append((text, f"{text}: no file matches this pattern."))
        else:
            found = []
            problems.append((text, f"{text}: file not found."))
        files.extend(found)
    unique = list(dict.fromkeys(files))  # a file named twice (say, alone and via its folder) is scored once
    return unique, problems


def read_gray(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/TIFF/BMP/WebP/GIF (via imaging.decode_for_letterbox) or DICOM to uint8 (H, W), in full.

    Refused with a ``ValueError`` naming the file: more than ``max_pixels`` (from the header, before
    decoding), multi-frame files, and degenerate shapes (short side < :data:`MIN_SIDE_PX`, aspect ratio
    > :data:`MAX_ASPECT`). A missing file raises ``FileNotFoundError``.
    """
    return read_for_letterbox(path, None, max_pixels=max_pixels).gray


def read_gray_bytes(data: bytes, *, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an in-memory file (an upload) exactly as :func:`read_gray` decodes one on disk; nothing is written.

    DICOM is recognised by the ``name``'s suffix or the "DICM" marker. Errors name ``name``.
    """
    return read_bytes_for_letterbox(data, None, name=name, max_pixels=max_pixels).gray


def read_for_letterbox(
    path: str | os.PathLike, size: int | None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Fitted:
    """Decode ``path`` for a ``size`` letterbox exactly as ``prepare`` decodes the training images.

    JPEGs are decoded in draft mode (:func:`assurexray.data.imaging.decode_for_letterbox`), the cache's own decode,
    so a file scored by ``infer`` gets the pixels evaluation scored, and a 3000 px original decodes several
    times faster than in full. Other formats, DICOM and ``size=None`` are decoded in full. Refusals as
    :func:`read_gray`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    if is_dicom(path):
        gray = read_dicom_gray(path, max_pixels=max_pixels)
        original = (gray.shape[1], gray.shape[0])
    else:
        check_shape(*image_size(path, max_pixels=max_pixels), label=str(path))  # header only
        gray, _, original = decode_for_letterbox(path, size, max_pixels=max_pixels)
    check_shape(*original, label=str(path))
    return Fitted(gray, (int(original[0]), int(original[1])))


def read_bytes_for_letterbox(
    data: bytes, size: int | None, *, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Fitted:
    """:func:`read_for_letterbox` of an in-memory file (an upload); DICOM by the ``name``'s suffix or "DICM"."""
    if Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM":
        gray = read_dicom_bytes(data, name=name, max_pixels=max_pixels)
        original = (gray.shape[1], gray.shape[0])
    else:
        check_shape(*image_size(io.BytesIO(data), label=name, max_pixels=max_pixels), label=name)
        gray, _, original = decode_bytes_for_letterbox(data, size, name=name, max_pixels=max_pixels)
    check_shape(*original, label=name)
    return Fitted(gray, (int(original[0]), int(original[1])))


def check_shape(width: int, height: int, *, label: str) -> None:
    """Refuse degenerate images (see :data:`MIN_SIDE_PX`, :data:`MAX_ASPECT`) naming the file and the fix."""
    short, long = min(width, height), max(width, height)
    if short < MIN_SIDE_PX:
        raise ValueError(
            f"{label}: degenerate image {width}x{height} px: the short side is below {MIN_SIDE_PX} px, too "
            "small to be a radiograph. Export the radiograph at its acquired resolution."
        )
    if long > MAX_ASPECT * short:
        raise ValueError(
            f"{label}: degenerate image {width}x{height} px: aspect ratio {long / short:.1f} exceeds "
            f"{MAX_ASPECT:g}, letterboxing would leave a sliver of pixels. Crop it to the radiograph."
        )


def _walk_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``folder`` (recursive, sorted) and problems for image types we cannot read.

    Hidden entries (``.DS_Store``, macOS ``._IMG.jpg`` resource forks, half-written ``.x.png.tmp``) are
    skipped: they are never radiographs. A file with an image suffix we do not decode (``.jp2``, ``.heic``...)
    is named as a failure, never dropped; other files (notes, spreadsheets) are counted in a warning.
    """
    found: list[Path] = []
    unsupported: list[tuple[str, str]] = []
    hidden, other = 0, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            hidden += 1
        # DICOM files are often named by UID ("1.2.840...5") or nothing: recognise them by content.
        elif suffix in IMAGE_SUFFIXES or is_dicom(path):
            found.append(path)
        elif suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            unsupported.append((str(path), (
                f"{path}: unsupported image type {suffix!r}; convert it to PNG or TIFF (readable types: "
                f"{_suffix_hint()})."
            )))
        else:
            other.append(path.name)
    if hidden:
        logger.info("%s: skipped %d hidden file(s) (names starting with '.')", folder, hidden)
    if other:
        logger.warning("%s: skipped %d non-image file(s) (e.g. %s); readable types: %s", folder, len(other),
                       other[:3], _suffix_hint())
    return found, unsupported


def _suffix_hint() -> str:
    return ", ".join(IMAGE_SUFFIXES) + ", or DICOM by content"
