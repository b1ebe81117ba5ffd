"""Tests for assurexray.learning.calibration: ECE by hand, temperature recovery, operating-point thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from assurexray.learning.calibration import (
    apply_temperature,
    argmax_cap,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_data,
    sensitivity_threshold,
    threshold_caveat,
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


def test_a_threshold_from_5_positives_falls_back_under_the_argmax_and_says_why():
    """The centre split's case: 5 validation Malignant images, the 5th-highest at 0.988."""
    positive = np.array([True] * 5 + [False] * 10)
    scores = np.array([0.999, 0.998, 0.995, 0.99, 0.988] + [0.1] * 10)
    choice = choose_threshold(positive, scores, n_classes=3, target_sensitivity=0.9, confidence=0.95,
                              positive_name="Malignant")
    assert choice.fitted_threshold == 0.988  # the plain fit: what the flag used to apply
    assert choice.threshold == argmax_cap(3) == 0.333333
    assert (choice.rule, choice.reliable, choice.val_positives, choice.min_val_positives) == (
        "capped_point_estimate", False, 5, 29)
    assert choice.val_sensitivity == 1.0 and choice.val_sensitivity_lower_bound == pytest.approx(0.05 ** (1 / 5))
    assert "chosen on 5 validation Malignant image(s), fewer than the 29 needed" in choice.reason
    assert threshold_caveat({"reliable": False, "reason": choice.reason}) == (
        f"UNRELIABLE Malignant threshold: {choice.reason}.")


def test_a_reliable_threshold_is_the_highest_whose_lower_bound_reaches_the_target():
    # 100 positives at 0.995, 0.985, ..., 0.005: a 0.9 target at 95% needs 96 flagged (the bound of 95/100 is
    # 0.898), so the threshold is the 96th-highest score, 0.045; the plain fit (90 flagged) would be 0.105.
    positive = np.array([True] * 100 + [False] * 50)
    scores = np.concatenate([0.995 - 0.01 * np.arange(100), np.full(50, 0.001)])
    choice = choose_threshold(positive, scores, n_classes=3, target_sensitivity=0.9, confidence=0.95)
    assert (choice.rule, choice.reliable, choice.reason) == ("sensitivity_lower_bound", True, None)
    assert choice.threshold == pytest.approx(0.045) and choice.fitted_threshold == pytest.approx(0.105)
    assert choice.val_sensitivity == 0.96 and choice.val_sensitivity_lower_bound >= 0.9
    assert threshold_caveat({"reliable": True, "reason": None}) is None and threshold_caveat({}) is None


def test_a_reliable_threshold_above_the_argmax_is_capped_at_it():
    positive = np.array([True] * 40 + [False] * 10)
    scores = np.concatenate([np.linspace(0.6, 0.99, 40), np.full(10, 0.2)])
    choice = choose_threshold(positive, scores, n_classes=4, target_sensitivity=0.9, confidence=0.95)
    assert choice.reliable and choice.threshold == argmax_cap(4) == 0.249999


def test_a_target_of_one_is_never_reliable():
    positive = np.array([True] * 200)
    choice = choose_threshold(positive, np.linspace(0.5, 1.0, 200), n_classes=3, target_sensitivity=1.0,
                              confidence=0.95)
    assert not choice.reliable and choice.min_val_positives is None and "beyond any finite" in choice.reason


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("n_positives", [3, 30, 200])
def test_the_flag_is_never_less_sensitive_than_the_argmax(n_classes, n_positives):
    """Whatever the validation set, every image whose top class is the positive one (near-ties included) is
    flagged at the chosen threshold."""
    rng = np.random.default_rng(n_classes * 1000 + n_positives)
    val = rng.dirichlet(np.full(n_classes, 0.3), size=n_positives + 100)
    val[:n_positives, -1] = 10.0  # positives (the last class) scored sure, so a plain fit lands near 1
    val /= val.sum(axis=1, keepdims=True)
    positive = np.arange(len(val)) < n_positives
    choice = choose_threshold(positive, val[:, -1], n_classes=n_classes, target_sensitivity=0.9, confidence=0.95)
    test = np.concatenate([rng.dirichlet(np.full(n_classes, 0.5), size=5000),
                           np.full((1, n_classes), 1.0) / n_classes + np.eye(n_classes)[-1] * 1e-12])
    top = test.argmax(axis=1) == n_classes - 1
    assert top.sum() > 100 and (test[top, -1] >= choice.threshold).all()


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
        (lambda: choose_threshold(np.array([True]), np.array([0.3]), n_classes=3, target_sensitivity=0.9,
                                  confidence=95), r"confidence must lie in \(0, 1\), got 95; pass evaluate\.ci_level"),
        (lambda: choose_threshold(np.array([True]), np.array([0.3]), n_classes=1, target_sensitivity=0.9,
                                  confidence=0.95), r"n_classes must be an integer >= 2, got 1"),
    ],
)
def test_bad_inputs_raise_a_message_naming_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()
