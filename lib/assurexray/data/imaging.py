"""Decode radiographs to 8-bit grayscale and letterbox them, keeping the geometry to map results back.

One geometry for images, masks and heatmaps: prepared = orig * scale + pad, content occupies
``[pad_y:pad_y+new_h, pad_x:pad_x+new_w]``. ``to_original`` inverts it so Grad-CAM maps and masks land on
the radiograph where they were computed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from assurexray.core.filetypes import RASTER_SUFFIXES

__all__ = [
    "RASTER_SUFFIXES",
    "Letterbox",
    "image_size",
    "pixel_cap_error",
    "decode_gray",
    "Fitted",
    "decode_for_letterbox",
    "decode_bytes_for_letterbox",
    "decode_gray_with_mode",
    "decode_gray_bytes",
    "decode_gray_array",
    "letterbox_geometry",
    "letterbox",
    "to_original",
    "box_to_original",
    "rasterize_polygons",
    "polygons_to_letterbox",
]

logger = logging.getLogger(__name__)

# RASTER_SUFFIXES: the raster file types decoded here (PIL); stated in assurexray.core.filetypes with the other lists.
#: Suffixes of image formats this project does not decode: named as unsupported, never silently dropped.
UNSUPPORTED_IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jp2", ".j2k", ".jpx", ".jxl", ".heic", ".heif", ".avif", ".dng", ".raw", ".nef", ".cr2", ".svg",
    ".pgm", ".ppm", ".pnm", ".pbm", ".ico", ".psd", ".jfif", ".jpe", ".nii", ".nrrd", ".mha",
)
# Formats whose extra frames are not images of the same thing: an MPO JPEG's frame 0 is the primary picture
# (the others are previews or a stereo partner), so it is read as frame 0 with an INFO log.
_PRIMARY_FRAME_FORMATS = frozenset({"MPO"})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # PIL formats with DCT-domain (draft) downscaling
# PIL's MAX_IMAGE_PIXELS is process-wide; while a decode applies its own ``max_pixels`` it is lifted (counted,
# so concurrent decodes in threads restore it only when the last one ends).
_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE = {"lifted": 0, "saved": None}

# Fixed-point bits for cv2.fillPoly: polygons are drawn with 1/16 px precision instead of rounded vertices.
_SHIFT = 4


@dataclass(frozen=True)
class Letterbox:
    """Where an image of the original size sits inside the ``size`` x ``size`` square."""

    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int
    size: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Fitted(NamedTuple):
    """A radiograph decoded for one letterbox size: ``gray`` may be a reduced decode (JPEG draft mode) of the
    file, whose full oriented size is ``original_size`` (width, height); the letterbox geometry comes from it."""

    gray: np.ndarray
    original_size: tuple[int, int]


def image_size(
    source: str | os.PathLike | io.BytesIO, *, label: str | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """(width, height) from the header only, refusing more than ``max_pixels`` (None: PIL's MAX_IMAGE_PIXELS).

    Raises ``ValueError`` naming ``label`` (default: the path) for unreadable files and oversized images.
    """
    label = str(source) if label is None else label
    source = Path(source) if isinstance(source, (str, os.PathLike)) else source
    with _open(source, label=label, max_pixels=max_pixels) as im:
        return im.size


def decode_gray(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode any common radiograph file to uint8 (H, W), EXIF orientation applied.

    ``max_pixels`` (checked from the header, before decoding) replaces PIL's own MAX_IMAGE_PIXELS, so a
    caller's limit can be raised above PIL's default; None keeps PIL's limit. Multi-frame files are refused.
    """
    return decode_gray_with_mode(path, max_pixels=max_pixels)[0]


def decode_gray_with_mode(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Like :func:`decode_gray`, also returning the file's PIL mode (``L``, ``RGB``, ``I;16``...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found.")
    return _decode_pil(path, label=str(path), max_pixels=max_pixels)[:2]


def decode_gray_bytes(data: bytes, *, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an in-memory image file (an upload) like :func:`decode_gray`; errors name ``name``."""
    return _decode_pil(io.BytesIO(data), label=name, max_pixels=max_pixels)[0]


def decode_for_letterbox(
    path: str | os.PathLike, size: int | None, *, max_pixels: int | None = None
) -> tuple[np.ndarray, str, tuple[int, int]]:
    """Decode ``path`` for a ``size`` letterbox: (gray uint8, file mode, original (width, height)).

    JPEGs are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain, several times
    faster on 3000 px originals than a full decode. The scale is chosen so the decoded image is still at least
    the letterbox content size in both axes (then INTER_AREA downscales it, as for a full decode). Pass the
    original size to :func:`letterbox` (``original_size``) so the geometry, and with it the mapping of
    masks and heatmaps, is exactly that of the full-resolution file. ``size=None`` decodes in full.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found.")
    return _decode_pil(path, label=str(path), max_pixels=max_pixels, fit=None if size is None else int(size))


def decode_bytes_for_letterbox(
    data: bytes, size: int | None, *, name: str, max_pixels: int | None = None
) -> tuple[np.ndarray, str, tuple[int, int]]:
    """:func:`decode_for_letterbox` of an in-memory file (an upload); errors name ``name``."""
    return _decode_pil(io.BytesIO(data), label=name, max_pixels=max_pixels, fit=None if size is None else int(size))


def pixel_cap_error(label: str | os.PathLike, width: int, height: int, max_pixels: int) -> ValueError:
    """The one message for an image over the ``max_pixels`` cap (raster here, DICOM in assurexray.data.dicom)."""
    return ValueError(
        f"{label}: image too large: {width}x{height} = {width * height} pixels exceeds "
        f"max_pixels={max_pixels}. Downsample it or raise --max-pixels."
    )


@contextlib.contextmanager
def _open(source: Path | io.BytesIO, *, label: str, max_pixels: int | None) -> Iterator[Image.Image]:
    """``Image.open`` with one pixel limit (ours, from the header) instead of PIL's global warning/error pair."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with _pil_limit_lifted():
            im = Image.open(source)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        # PIL's own message names the file object (a BytesIO repr for uploads): the label says which file.
        reason = "cannot identify the image format" if isinstance(err, UnidentifiedImageError) else str(err)
        raise ValueError(
            f"{label}: not a readable image ({type(err).__name__}: {reason}); expected JPEG, PNG, TIFF, BMP, WebP, "
            "GIF or DICOM. Re-export it."
        ) from err
    with im:
        width, height = im.size
        if limit is not None and width * height > limit:
            if max_pixels is None:
                raise ValueError(
                    f"{label}: image too large to decode safely ({width}x{height} = {width * height} pixels "
                    f"exceeds PIL.Image.MAX_IMAGE_PIXELS={limit}; a decompression bomb?). Downscale the file."
                )
            raise pixel_cap_error(label, width, height, max_pixels)
        yield im


@contextlib.contextmanager
def _pil_limit_lifted() -> Iterator[None]:
    with _LIMIT_LOCK:
        if _LIMIT_STATE["lifted"] == 0:
            _LIMIT_STATE["saved"] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _LIMIT_STATE["lifted"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_STATE["lifted"] -= 1
            if _LIMIT_STATE["lifted"] == 0:
                Image.MAX_IMAGE_PIXELS = _LIMIT_STATE["saved"]


def _decode_pil(
    source: Path | io.BytesIO, *, label: str, max_pixels: int | None, fit: int | None = None
) -> tuple[np.ndarray, str, tuple[int, int]]:
    """(gray, file mode, (width, height) of the full oriented image); ``fit`` enables JPEG draft decoding."""
    with _open(source, label=label, max_pixels=max_pixels) as im:
        mode = im.mode
        try:
            # Our limit was applied to the header above; PIL's global one is lifted while frames are counted
            # and pixels loaded (TIFF pages and tiles re-check it).
            with _pil_limit_lifted():
                _check_single_frame(im, label=label)
                orientation = im.getexif().get(0x0112, 1)
                width, height = im.size
                transposed = orientation in (5, 6, 7, 8)  # EXIF rotations by 90 degrees swap the axes
                if transposed:
                    width, height = height, width
                if fit is not None and im.format in _DRAFT_FORMATS:
                    geom = letterbox_geometry(width, height, fit)
                    request = (geom.new_h, geom.new_w) if transposed else (geom.new_w, geom.new_h)
                    im.draft(im.mode, request)  # decoded size >= request in both axes (PIL picks the scale)
                im.load()
                im = ImageOps.exif_transpose(im)
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            if isinstance(err, ValueError) and str(err).startswith(label):
                raise
            raise ValueError(
                f"{label}: unreadable or corrupt image ({type(err).__name__}: {err}). Re-export it."
            ) from err
        try:
            gray = _pil_to_gray(im)
        except ValueError as err:  # pixel values no 8-bit display can show (NaN, inf)
            raise ValueError(f"{label}: {err} Re-export the image with finite pixel values.") from err
    return gray, mode, (width, height)


def _check_single_frame(im: Image.Image, *, label: str) -> None:
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames <= 1:
        return
    if im.format in _PRIMARY_FRAME_FORMATS:
        logger.info("%s: %s file with %d frames; reading frame 0, the primary image", label, im.format, frames)
        return
    raise ValueError(
        f"{label}: multi-frame {im.format} with {frames} frames; only single-frame radiographs are supported "
        "(frame 0 alone would be scored silently). Export the frame to classify as its own file."
    )


def decode_gray_array(array: np.ndarray) -> np.ndarray:
    """Convert a pixel array (2-D, or H x W x 1/3/4) of any numeric dtype to uint8 (H, W) grayscale.

    uint8 passes through; wider integer and float data (16-bit radiographs, DICOM) are min-max scaled
    linearly to 0..255, since their raw range says nothing about display intensity.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(arr[:, :, :3]), cv2.COLOR_RGB2GRAY)
        weights = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's convert("L")
        arr = arr[:, :, :3].astype(np.float64) @ weights
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected a 2-D image or H x W x 1/3/4 array, got shape {np.shape(array)}.")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"expected a numeric pixel array, got dtype {arr.dtype}.")
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("pixel array contains NaN or infinite values; cannot scale it to 8 bits.")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def letterbox_geometry(width: int, height: int, size: int) -> Letterbox:
    """Geometry that fits ``width`` x ``height`` into a ``size`` square, aspect kept, centred."""
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"image width and height must be >= 1, got {width!r} x {height!r}.")
    if int(size) < 1:
        raise ValueError(f"letterbox size must be >= 1 px, got {size!r}.")
    width, height, size = int(width), int(height), int(size)
    scale = size / max(width, height)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return Letterbox(scale=scale, pad_x=(size - new_w) // 2, pad_y=(size - new_h) // 2,
                     new_w=new_w, new_h=new_h, size=size)


def letterbox(
    gray: np.ndarray, size: int, *, original_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """Resize uint8 (H, W) into a zero-padded ``size`` square; INTER_AREA when shrinking (no aliasing).

    ``original_size`` (width, height) is the file's full size when ``gray`` was decoded reduced
    (:func:`decode_for_letterbox`): the geometry is computed from it, so it matches a full decode exactly.
    """
    if gray.ndim != 2:
        raise ValueError(f"letterbox expects a 2-D grayscale array, got shape {gray.shape}.")
    height, width = gray.shape
    geom = letterbox_geometry(*(original_size or (width, height)), size)
    interpolation = cv2.INTER_AREA if width > geom.new_w or height > geom.new_h else cv2.INTER_LINEAR
    content = cv2.resize(gray, (geom.new_w, geom.new_h), interpolation=interpolation)
    out = np.zeros((geom.size, geom.size), dtype=gray.dtype)
    out[geom.pad_y:geom.pad_y + geom.new_h, geom.pad_x:geom.pad_x + geom.new_w] = content
    return out, geom


def to_original(array: np.ndarray, geom: Letterbox, width: int, height: int) -> np.ndarray:
    """Crop the padding off a (S, S[, C]) array and resize it to ``width`` x ``height``.

    Integer/bool arrays (masks) use nearest-neighbour so labels stay labels; float arrays (heatmaps) are
    interpolated linearly.
    """
    if array.shape[:2] != (geom.size, geom.size):
        raise ValueError(f"array shape {array.shape} does not match the letterbox size {geom.size}.")
    crop = np.ascontiguousarray(array[geom.pad_y:geom.pad_y + geom.new_h, geom.pad_x:geom.pad_x + geom.new_w])
    width, height = int(width), int(height)
    if np.issubdtype(crop.dtype, np.floating):
        out = cv2.resize(crop.astype(np.float32 if crop.dtype == np.float16 else crop.dtype, copy=False),
                         (width, height), interpolation=cv2.INTER_LINEAR)
        if out.ndim < array.ndim:  # cv2 drops a trailing single channel
            out = out[..., None]
        return out.astype(array.dtype, copy=False)
    # Nearest neighbour by pixel centres, for any integer/bool dtype.
    rows = np.minimum(((np.arange(height) + 0.5) * geom.new_h / height).astype(np.int64), geom.new_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * geom.new_w / width).astype(np.int64), geom.new_w - 1)
    return crop[rows[:, None], cols[None, :]]


def box_to_original(
    box: tuple[int, int, int, int], geom: Letterbox, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Map a pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the letterboxed square to the smallest box of
    the ``width`` x ``height`` original that covers the same area; None when it lies wholly in the padding.

    Per axis, as :func:`to_original` maps arrays: the content's ``new_w`` columns span the ``width`` original
    columns, so prepared column ``c`` covers original x in ``[(c - pad_x) * width / new_w, ...)``; the start is
    floored, the end ceiled, both clipped to the image. Integer arithmetic, so the result is exact.
    """
    if geom.new_w < 1 or geom.new_h < 1:
        raise ValueError(f"letterbox geometry {geom} has an empty content area.")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)!r}: expected x0 < x1 and y0 < y1 (x1, y1 exclusive).")
    width, height = int(width), int(height)

    def floor(v: int, pad: int, n: int, full: int) -> int:
        return min(full, max(0, (v - pad) * full // n))

    def ceil(v: int, pad: int, n: int, full: int) -> int:
        return min(full, max(0, -((pad - v) * full // n)))

    out = (floor(x0, geom.pad_x, geom.new_w, width), floor(y0, geom.pad_y, geom.new_h, height),
           ceil(x1, geom.pad_x, geom.new_w, width), ceil(y1, geom.pad_y, geom.new_h, height))
    return out if out[2] > out[0] and out[3] > out[1] else None


def rasterize_polygons(polygons: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """Union of filled polygons as uint8 (height, width) 0/1, vertices at pixel centres (as LabelMe).

    The outline is drawn too, so a lesion smaller than a pixel after downscaling still marks a pixel.
    """
    mask = np.zeros((int(height), int(width)), dtype=np.uint8)
    if not len(polygons):
        return mask
    points = [np.round(np.asarray(p, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
              for p in polygons]
    cv2.fillPoly(mask, points, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    cv2.polylines(mask, points, True, 1, thickness=1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def polygons_to_letterbox(polygons: Sequence[np.ndarray], geom: Letterbox) -> tuple[np.ndarray, ...]:
    """Map (K, 2) polygons from original pixels into the letterboxed square (orig * scale + pad)."""
    offset = np.array([geom.pad_x, geom.pad_y], dtype=np.float64)
    return tuple(np.asarray(p, dtype=np.float64) * geom.scale + offset for p in polygons)


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode in {"I", "F"}:
        return decode_gray_array(np.array(im))
    if mode == "CMYK":
        im = im.convert("RGB")
    elif mode in {"P", "PA"}:
        im = im.convert("RGBA")
    if im.mode in {"RGBA", "LA", "RGBa", "La"}:
        # Composite on black: transparent regions are padding, like the letterbox border.
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return np.array(im.convert("L"), dtype=np.uint8)
