"""LabelMe annotations of the BTXRD release: lesion polygons (the mask) and rectangles (the box) per image.

Shapes are validated with the file and shape index, and brought into the real image's pixels: a resized
copy of the release keeps the JSON unchanged, so shapes are scaled (and that is recorded); points a little
outside are clipped and counted, farther out the annotation belongs to another image and is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Annotation", "read_labelme"]



_SHAPE_TYPES: tuple[str, ...] = ("polygon", "rectangle")


# A resized copy keeps the aspect ratio up to rounding; beyond this the JSON belongs to another image.
_ASPECT_TOLERANCE_PX = 2.0


_ASPECT_TOLERANCE_FRACTION = 0.02


# LabelMe clicks on the border land a little outside; beyond this the shape was drawn on another image.
_OUTSIDE_TOLERANCE_PX = 2.0


_OUTSIDE_TOLERANCE_FRACTION = 0.02


@dataclass(frozen=True, eq=False)
class Annotation:
    """One LabelMe file: lesion polygons (the mask) and rectangles (the box), in real-image pixels.

    ``labels`` runs parallel to ``polygons`` and ``box_labels`` to ``boxes``; ``json_size`` is the
    (width, height) the JSON was drawn on, ``image_size`` the (width, height) the shapes are expressed in.
    """

    image_path: str
    polygons: tuple[np.ndarray, ...]  # each (K, 2) float64, columns x, y
    boxes: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1), x0 <= x1, y0 <= y1
    labels: tuple[str, ...]
    json_size: tuple[int, int]
    image_size: tuple[int, int]
    box_labels: tuple[str, ...] = ()
    source: Path | None = None
    stretched: bool = False  # the image file has another aspect ratio (a squashed copy): scaled per axis
    rescaled: bool = False  # the image file has another size than the JSON (a resized copy): shapes scaled
    n_clipped: int = 0  # points a little outside the image (within tolerance) moved onto its border


def read_labelme(path: str | os.PathLike, *, image_size: tuple[int, int] | None = None) -> Annotation:
    """Read a LabelMe JSON, scaling its shapes to ``image_size`` (w, h) of the real file and clipping them.

    BTXRD draws one polygon (lesion outline) and one rectangle (its box) per lesion, in the pixels of
    ``imageWidth`` x ``imageHeight``. Resized copies of the release keep the JSON unchanged, hence scaling
    (per axis: a squashed copy sets ``stretched``; a 90-degree rotated one is refused) and ``rescaled``
    records it, for prepare to report. Points up to 2 px / 2 % outside the JSON's image are clipped onto its
    border and counted (``n_clipped``); farther out the shape belongs to another image and is refused. Any
    other shape type is reported, never guessed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid LabelMe JSON file ({err}). Re-export the annotation.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (LabelMe), got {type(data).__name__}.")
    for key in ("shapes", "imageWidth", "imageHeight"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}; keys found: {sorted(data)}. Re-export with LabelMe.")
    json_w = _positive_int(data["imageWidth"], path, "imageWidth")
    json_h = _positive_int(data["imageHeight"], path, "imageHeight")
    width, height = (json_w, json_h) if image_size is None else (int(image_size[0]), int(image_size[1]))
    if width < 1 or height < 1:
        raise ValueError(f"{path}: image_size must be positive (width, height), got {image_size!r}.")
    stretched = _check_aspect(path, (json_w, json_h), (width, height))
    sx, sy = width / json_w, height / json_h
    if not isinstance(data["shapes"], list):
        raise ValueError(f"{path}: 'shapes' must be a list, got {type(data['shapes']).__name__}.")

    polygons, labels, boxes, box_labels = [], [], [], []
    n_clipped = 0
    for index, shape in enumerate(data["shapes"]):
        points, kind, label = _shape(shape, path, index)
        n_clipped += _check_inside(points, (json_w, json_h), path, index, kind)
        points = points * (sx, sy)
        points[:, 0] = np.clip(points[:, 0], 0.0, width - 1.0)
        points[:, 1] = np.clip(points[:, 1], 0.0, height - 1.0)
        if kind == "polygon":
            polygons.append(points)
            labels.append(label)
        else:
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
            boxes.append((float(x0), float(y0), float(x1), float(y1)))
            box_labels.append(label)
    image_path = data.get("imagePath") or ""
    return Annotation(
        image_path=str(image_path), polygons=tuple(polygons), boxes=tuple(boxes), labels=tuple(labels),
        json_size=(json_w, json_h), image_size=(width, height), box_labels=tuple(box_labels), source=path,
        stretched=stretched, rescaled=(json_w, json_h) != (width, height), n_clipped=n_clipped,
    )


def _positive_int(value: Any, path: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
        raise ValueError(f"{path}: {key!r} must be a positive integer, got {value!r}.")
    return int(value)


def _check_inside(points: np.ndarray, size: tuple[int, int], path: Path, index: int, kind: str) -> int:
    """Number of ``points`` outside the (width, height) image within tolerance; refuse any farther out."""
    width, height = size
    tol_x = max(_OUTSIDE_TOLERANCE_PX, _OUTSIDE_TOLERANCE_FRACTION * width)
    tol_y = max(_OUTSIDE_TOLERANCE_PX, _OUTSIDE_TOLERANCE_FRACTION * height)
    over_x = np.maximum(-points[:, 0], points[:, 0] - (width - 1))
    over_y = np.maximum(-points[:, 1], points[:, 1] - (height - 1))
    far = (over_x > tol_x) | (over_y > tol_y)
    if far.any():
        x, y = points[int(np.flatnonzero(far)[0])]
        raise ValueError(
            f"{path}: shape {index} ({kind}) has {int(far.sum())} point(s) outside the {width}x{height} image "
            f"it was drawn on, e.g. ({x:g}, {y:g}); the annotation belongs to another image or was edited by hand. "
            "Re-draw it in LabelMe on this image or remove the shape."
        )
    return int(((over_x > 0) | (over_y > 0)).sum())


def _same_aspect(json_size: tuple[int, int], size: tuple[int, int]) -> bool:
    """True when ``size`` is ``json_size`` resized with its aspect kept (up to rounding)."""
    (jw, jh), (w, h) = json_size, size
    tol_w = max(_ASPECT_TOLERANCE_PX, _ASPECT_TOLERANCE_FRACTION * w)
    tol_h = max(_ASPECT_TOLERANCE_PX, _ASPECT_TOLERANCE_FRACTION * h)
    return abs(w - jw * h / jh) <= tol_w and abs(h - jh * w / jw) <= tol_h


def _check_aspect(path: Path, json_size: tuple[int, int], size: tuple[int, int]) -> bool:
    """Return whether the copy was stretched (per-axis scaling still maps the shapes); refuse a rotation."""
    if _same_aspect(json_size, size):
        return False
    if _same_aspect((json_size[1], json_size[0]), size):
        raise ValueError(
            f"{path}: drawn on a {json_size[0]}x{json_size[1]} image but the image file is {size[0]}x{size[1]}, "
            "i.e. rotated by 90 degrees; the shapes would land in the wrong place. Use the release image "
            "(or keep its EXIF orientation) or re-draw the annotation."
        )
    return True


def _shape(shape: Any, path: Path, index: int) -> tuple[np.ndarray, str, str]:
    if not isinstance(shape, dict):
        raise ValueError(f"{path}: shape {index} is not an object, got {type(shape).__name__}.")
    for key in ("shape_type", "points"):
        if key not in shape:
            raise ValueError(f"{path}: shape {index} has no {key!r} key; keys found: {sorted(shape)}.")
    kind = shape["shape_type"]
    if kind not in _SHAPE_TYPES:
        raise ValueError(
            f"{path}: shape {index} has type {kind!r}; only {list(_SHAPE_TYPES)} are expected in BTXRD. "
            "Convert or remove that shape."
        )
    try:
        points = np.asarray(shape["points"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: shape {index} ({kind}) has non-numeric points ({err}).") from err
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(
            f"{path}: shape {index} ({kind}) points must be finite [x, y] pairs, got shape {points.shape}."
        )
    need = 3 if kind == "polygon" else 2
    if (kind == "polygon" and len(points) < need) or (kind == "rectangle" and len(points) != need):
        raise ValueError(
            f"{path}: shape {index} ({kind}) has {len(points)} points; a {kind} needs "
            f"{'at least 3' if kind == 'polygon' else 'exactly 2'}."
        )
    label = shape.get("label", "")
    return points, kind, "" if label is None else str(label)
