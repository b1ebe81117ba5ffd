"""Tests for assurexray.learning.calibration: ECE by hand, temperature recovery, operating-point thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from assurexray.learning.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_data,
    sensitivity_threshold,
)


def test_ece_matches_a_hand_computed_example():
    # Two bins used (of 10): confidence 0.95 -> bin (0.9, 1], 0.65 -> bin (0.6, 0.7].
    # Bin 0.9: two images, both right -> |1 - 0.95| = 0.05; bin 0.6: two images, one right -> |0.5 - 0.65| = 0.15.
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.65, 0.35], [0.35, 0.65]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(y, probs, bins=10) == pytest.approx(0.5 * 0.05 + 0.5 * 0.15)
    data = reliability_data(y, probs, bins=10)
    assert data["count"][9] == 2 and data["count"][6] == 2 and sum(data["count"]) == 4
    assert data["accuracy"][6] == pytest.approx(0.5) and data["confidence"][9] == pytest.approx(0.95)
    assert data["accuracy"][0] is None  # empty bins are None, not 0


def test_a_perfectly_calibrated_bin_has_zero_ece():
    probs = np.array([[0.75, 0.25]] * 4)
    y = np.array([0, 0, 0, 1])
    assert expected_calibration_error(y, probs, bins=4) == pytest.approx(0.0)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovers_a_known_temperature_on_synthetic_logits(true_t):
    rng = np.random.default_rng(0)
    n, k = 4000, 3
    base = rng.normal(scale=2.0, size=(n, k))  # calibrated logits: labels drawn from softmax(base)
    cdf = np.cumsum(apply_temperature(base, 1.0), axis=1)
    y = (rng.random(n)[:, None] > cdf).sum(axis=1)
    overconfident = base * true_t  # a model emitting these is miscalibrated by exactly true_t
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(true_t, rel=0.08)
    assert negative_log_likelihood(overconfident, y, t) < negative_log_likelihood(overconfident, y, 1.0)


def test_temperature_one_leaves_probabilities_unchanged_and_any_t_keeps_the_argmax():
    logits = np.array([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]])
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(logits, 1.0), expected)
    np.testing.assert_array_equal(apply_temperature(logits, 3.0).argmax(1), logits.argmax(1))


def test_fit_temperature_is_deterministic():
    rng = np.random.default_rng(1)
    logits, y = rng.normal(size=(50, 3)) * 3, rng.integers(0, 3, 50)
    assert fit_temperature(logits, y) == fit_temperature(logits, y)


def test_threshold_is_the_highest_reaching_the_target_sensitivity():
    positive = np.array([1] * 10 + [0] * 3, dtype=bool)
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.9, 0.4, 0.1])
    # 0.7 * 10 must need exactly 7 positives (float 7.000000000000001 must not round up to 8).
    assert sensitivity_threshold(positive, scores, target_sensitivity=0.7) == (pytest.approx(0.65), 0.7)
    t, achieved = sensitivity_threshold(positive, scores, target_sensitivity=0.75)
    assert (t, achieved) == (pytest.approx(0.6), pytest.approx(0.8))
    assert sensitivity_threshold(positive, scores, target_sensitivity=1.0)[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: apply_temperature(np.zeros((2, 3)), 0.0), "temperature must be > 0"),
        (lambda: fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])), "NaN or inf"),
        (lambda: fit_temperature(np.zeros((2, 2)), np.array([0, 2])), r"class indices in 0\.\.1"),
        (lambda: fit_temperature(np.zeros((2, 2)), np.array([0, 1]), bounds=(2.0, 1.0)), "0 < low < high"),
        (lambda: reliability_data(np.array([0]), np.array([[1.0, 0.0]]), bins=0), "bins must be a positive"),
        (lambda: sensitivity_threshold(np.array([False]), np.array([0.3]), target_sensitivity=0.9), "no positive"),
        (lambda: sensitivity_threshold(np.array([True]), np.array([0.3]), target_sensitivity=1.5),
         "malignant_target_sensitivity must lie in"),
    ],
)
def test_bad_inputs_raise_a_message_naming_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()
