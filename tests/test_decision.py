"""Tests for assurexray.assessment.decision: the operating point put into words for infer and the app."""

from __future__ import annotations

import pytest

from assurexray.assessment.decision import (
    ValidationRates,
    flags_every_top_malignant,
    sensitivity_claim,
    threshold_sentence,
)
from assurexray.learning.prediction import OperatingPoint

REASON = "chosen on 5 validation Malignant image(s), fewer than the 29 needed"


def test_an_unreliable_thresholds_caveat_leads_the_threshold_sentence():
    op = OperatingPoint(malignant_threshold=0.333333, target_sensitivity=0.9, reliable=False, reason=REASON)
    rates = ValidationRates(sensitivity=1.0, specificity=0.4, n_malignant=5, n_other=40)
    text = threshold_sentence(threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity,
                              split="center", rates=rates, caveat=op.caveat)
    assert text.startswith(f"UNRELIABLE Malignant threshold: {REASON}. Malignant flag when P(Malignant) >= 0.333")
    assert "(5 Malignant images)" in text


def test_a_reliable_threshold_gets_no_caveat():
    op = OperatingPoint(malignant_threshold=0.2, target_sensitivity=0.9, reliable=True, rule="sensitivity_lower_bound")
    text = threshold_sentence(threshold=0.2, target_sensitivity=0.9, split="stratified", rates=None, caveat=op.caveat)
    assert op.caveat is None and "UNRELIABLE" not in text and text.startswith("Malignant flag when")


@pytest.mark.parametrize(("threshold", "n_classes", "expected"), [
    (0.333333, 3, True),  # choose_threshold's cap for K = 3
    (0.3, 3, True),
    (0.3334, 3, False),  # above 1/3: an image with Malignant on top at p = 0.334 - eps goes unflagged
    (0.5, 2, False),  # exactly 1/K is not trusted: softmax rounding can put the top class a hair below it
    (0.25, 4, False),
    (0.249999, 4, True),
])
def test_every_image_with_malignant_on_top_is_flagged_only_at_or_below_the_argmax_cap(threshold, n_classes,
                                                                                      expected):
    assert flags_every_top_malignant(threshold, n_classes) is expected


def test_sensitivity_is_claimed_only_for_a_threshold_marked_reliable():
    assert sensitivity_claim(reliable=True, target_sensitivity=0.9) == (
        "its threshold was chosen so that a lower confidence bound on validation sensitivity reaches 0.90")
    assert sensitivity_claim(reliable=False, target_sensitivity=0.9) is None
    assert sensitivity_claim(reliable=None, target_sensitivity=0.9) is None  # not recorded: no claim either
