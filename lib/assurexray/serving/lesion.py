"""The lesion map as users see it: its score, its box in the original image's pixels, and the words around it.

A model with a lesion decoder (:mod:`assurexray.learning.lesion_head`) gives a probability per pixel of the
letterboxed input. ``assurexray infer`` and the web app report the map's maximum (``lesion_score``) and the box of
the pixels at or above :data:`~assurexray.learning.lesion_head.LESION_THRESHOLD`, mapped back to the file's own
pixels (:func:`assurexray.data.imaging.box_to_original`), so a box can be drawn on the radiograph the user has.
The map is a model's estimate of where a tumour is: research only, NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from assurexray.data.imaging import box_to_original, letterbox_geometry
from assurexray.learning.lesion_head import LESION_THRESHOLD
from assurexray.learning.prediction import Predictor

__all__ = ["LESION_BOX_COLUMNS", "LESION_COLUMNS", "LesionFinding", "find_lesion", "lesion_fields",
           "lesion_maps_available", "finding_sentence", "overlay_caption"]

logger = logging.getLogger(__name__)

#: The lesion box in CSV, one column per coordinate (JSON Lines: ``lesion_box`` = [x0, y0, x1, y1] or null).
LESION_BOX_COLUMNS: tuple[str, ...] = ("lesion_box_x0", "lesion_box_y0", "lesion_box_x1", "lesion_box_y1")
#: The CSV columns of a model with a lesion decoder, in order.
LESION_COLUMNS: tuple[str, ...] = ("lesion_score", "lesion_threshold", *LESION_BOX_COLUMNS)


@dataclass(frozen=True)
class LesionFinding:
    """One image's lesion map summarised: ``score`` = the map's maximum over the image (padding excluded), and
    ``box`` = ``(x0, y0, x1, y1)`` in original pixels (x1, y1 exclusive) of the pixels with p >= ``threshold``,
    None when none reaches it (then ``score < threshold`` says why)."""

    score: float
    box: tuple[int, int, int, int] | None
    threshold: float = LESION_THRESHOLD


def find_lesion(lesion_map: np.ndarray, original_size: tuple[int, int], *,
                threshold: float = LESION_THRESHOLD) -> LesionFinding:
    """Score and box of an ``(S, S)`` prepared-geometry ``lesion_map`` for an image of ``original_size``
    (width, height). Only the letterbox's content counts: the padding is not part of the radiograph."""
    if lesion_map.ndim != 2 or lesion_map.shape[0] != lesion_map.shape[1]:
        raise ValueError(f"find_lesion: expected a square (S, S) map, got shape {lesion_map.shape}.")
    width, height = original_size
    geom = letterbox_geometry(width, height, lesion_map.shape[0])
    content = lesion_map[geom.pad_y:geom.pad_y + geom.new_h, geom.pad_x:geom.pad_x + geom.new_w]
    score = float(np.clip(content.max(), 0.0, 1.0))
    rows, cols = np.nonzero(content >= threshold)
    if not len(rows):
        return LesionFinding(score=score, box=None, threshold=threshold)
    prepared = (int(cols.min()) + geom.pad_x, int(rows.min()) + geom.pad_y,
                int(cols.max()) + 1 + geom.pad_x, int(rows.max()) + 1 + geom.pad_y)
    return LesionFinding(score=score, box=box_to_original(prepared, geom, width, height), threshold=threshold)


def lesion_fields(finding: LesionFinding | None, *, box_columns: bool) -> dict[str, Any]:
    """One output row's lesion fields (all None for a failed input): the box as ``lesion_box`` (a list, JSON) or,
    with ``box_columns`` (CSV), as the four :data:`LESION_BOX_COLUMNS`."""
    box = None if finding is None else finding.box
    fields: dict[str, Any] = {"lesion_score": None if finding is None else finding.score,
                              "lesion_threshold": None if finding is None else finding.threshold}
    if box_columns:
        fields.update(zip(LESION_BOX_COLUMNS, box or (None,) * len(LESION_BOX_COLUMNS)))
    else:
        fields["lesion_box"] = None if box is None else list(box)
    return fields


def lesion_maps_available(predictor: Predictor) -> bool:
    """Whether ``predictor`` gives lesion maps; an ensemble whose members do not all carry a decoder gives none,
    said in the log (an average over some members would not be the ensemble's estimate)."""
    if predictor.has_lesion_maps:
        return True
    members = predictor.lesion_members
    if any(members):
        without = [str(p) for p, has in zip(predictor.model_paths, members) if not has]
        logger.warning("lesion map: off for this ensemble: %s %s no lesion decoder, so there is no map every "
                       "member agrees to; pass only models trained with model.lesion_head: true for one.",
                       without, "has" if len(without) == 1 else "have")
    return False


def finding_sentence(finding: LesionFinding) -> str:
    """The score and the box in words, or why there is no box."""
    score = f"Lesion score (the map's maximum) {finding.score:.2f}"
    if finding.box is None:
        return f"{score}: no pixel reached p >= {finding.threshold:.2f}, so no lesion box."
    x0, y0, x1, y1 = finding.box
    return (f"{score}; lesion box (p >= {finding.threshold:.2f}): x {x0}-{x1}, y {y0}-{y1} "
            "in the original image's pixels (x1, y1 exclusive).")


def overlay_caption(finding: LesionFinding) -> str:
    """The overlay's caption under its title: the score and the box, short enough for the banner."""
    if finding.box is None:
        return f"score {finding.score:.2f}: nothing >= {finding.threshold:.2f}, no box"
    x0, y0, x1, y1 = finding.box
    return f"score {finding.score:.2f}; box x {x0}-{x1}, y {y0}-{y1} (p >= {finding.threshold:.2f})"
