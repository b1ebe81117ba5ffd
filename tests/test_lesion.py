"""The lesion map as users see it (assurexray.serving.lesion): score, box in original pixels, words, overlay."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import ImageDraw

from assurexray.assessment import gallery
from assurexray.serving.lesion import (
    LesionFinding,
    find_lesion,
    finding_sentence,
    lesion_fields,
    lesion_maps_available,
    overlay_caption,
)


def block_map(value: float = 0.9) -> np.ndarray:
    """A 32 px map of a 300 x 200 image (content rows 5..25, see test_imaging.BOXES): ``value`` on prepared
    rows 10..19, columns 8..15, and 0.99 in the top padding row 2, which is not part of the radiograph."""
    lesion = np.zeros((32, 32), dtype=np.float32)
    lesion[10:20, 8:16] = value
    lesion[2, :] = 0.99
    return lesion


def test_the_box_and_score_come_from_the_image_in_its_own_pixels_not_the_padding():
    finding = find_lesion(block_map(), (300, 200))
    # letterboxed, the box would be (8, 10, 16, 20), and (0, 2, 32, 20) with the padding row counted
    assert finding == LesionFinding(score=pytest.approx(0.9), box=(75, 47, 150, 143), threshold=0.5)


def test_a_map_below_the_threshold_has_no_box_and_the_score_says_why():
    finding = find_lesion(block_map(0.3), (300, 200))
    assert finding.box is None and finding.score == pytest.approx(0.3)
    assert finding_sentence(finding) == ("Lesion score (the map's maximum) 0.30: no pixel reached p >= 0.50, "
                                         "so no lesion box.")
    assert lesion_fields(finding, box_columns=True) == {
        "lesion_score": pytest.approx(0.3), "lesion_threshold": 0.5, "lesion_box_x0": None, "lesion_box_y0": None,
        "lesion_box_x1": None, "lesion_box_y1": None}
    assert lesion_fields(finding, box_columns=False)["lesion_box"] is None


def test_a_found_box_is_said_in_original_pixels_with_its_threshold():
    finding = find_lesion(block_map(), (300, 200))
    assert finding_sentence(finding) == ("Lesion score (the map's maximum) 0.90; lesion box (p >= 0.50): x 75-150, "
                                         "y 47-143 in the original image's pixels (x1, y1 exclusive).")
    assert overlay_caption(finding) == "score 0.90; box x 75-150, y 47-143 (p >= 0.50)"
    assert lesion_fields(finding, box_columns=False)["lesion_box"] == [75, 47, 150, 143]


def test_a_map_that_is_not_square_is_refused():
    with pytest.raises(ValueError, match=r"expected a square \(S, S\) map, got shape \(32, 16\)"):
        find_lesion(np.zeros((32, 16)), (300, 200))


def test_every_lesion_overlay_carries_its_title_under_the_disclaimer(monkeypatch):
    drawn = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: drawn.append(text) or real(self, xy, text, *a, **k))
    gray = np.full((200, 300), 40, dtype=np.uint8)
    image = gallery.render_lesion_overlay(gray, block_map(), caption="score 0.90", box=(75, 47, 150, 143))
    banner = " ".join(drawn)
    assert drawn[0] == "NOT FOR CLINICAL USE" and gallery.LESION_MAP_TITLE in banner  # wrapped rows rejoin
    assert "lesion probability: 0" in drawn and "score 0.90" in drawn
    body = image[image.shape[0] - 200:].astype(int)  # 300 x 200 is drawn at its own size under the banner
    assert tuple(body[47, 100]) == (255, 255, 255) and tuple(body[100, 75]) == (255, 255, 255)  # the box outline
    assert body[100, 110, 0] > body[100, 110, 2] and body[100, 250, 2] > body[100, 250, 0]  # red inside, blue out


class _Members:
    """A stand-in predictor: which members carry a lesion decoder."""

    def __init__(self, *members: bool) -> None:
        self.lesion_members = members
        self.has_lesion_maps = all(members)
        self.model_paths = tuple(f"m{i}.pt" for i in range(len(members)))


def test_a_mixed_ensemble_gives_no_lesion_map_and_says_which_member_lacks_it(caplog):
    with caplog.at_level(logging.WARNING, logger="assurexray.serving.lesion"):
        assert lesion_maps_available(_Members(True, False)) is False
    assert "lesion map: off for this ensemble: ['m1.pt'] has no lesion decoder" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="assurexray.serving.lesion"):
        assert lesion_maps_available(_Members(False)) is False and lesion_maps_available(_Members(True, True))
    assert caplog.text == ""  # a plain model is not worth a note
