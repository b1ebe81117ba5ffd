"""Calibration: temperature scaling, expected calibration error, reliability data, operating points.

Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599) divides the logits by one scalar
T fitted on validation by minimising the negative log-likelihood; it changes confidence, never the argmax.
The Malignant operating point is picked on validation and then only *applied* to test, so the test
sensitivity is an honest estimate of what the threshold achieves on unseen images. How it is picked, and when
it is marked unreliable, is :func:`choose_threshold`'s rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from scipy.stats import beta

from assurexray.core.project import MALIGNANT

logger = logging.getLogger(__name__)

__all__ = [
    "apply_temperature",
    "fit_temperature",
    "negative_log_likelihood",
    "expected_calibration_error",
    "reliability_data",
    "sensitivity_threshold",
    "ThresholdChoice",
    "choose_threshold",
    "argmax_cap",
    "threshold_caveat",
    "MIN_THRESHOLD_POSITIVES",
    "RULE_LOWER_BOUND",
    "RULE_FALLBACK",
]

#: Search interval of the temperature (T < 1 sharpens, T > 1 softens); bounded so the fit cannot run away.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
#: Fewer validation positives than this and no threshold is trusted, whatever its bound says: with 5 positives
#: "90% sensitivity" is the 5th-highest score, and one image more or less moves it anywhere.
MIN_THRESHOLD_POSITIVES = 20
#: The rule of a reliable operating point, and of the fallback (values of ``rule`` in operating_point.json).
RULE_LOWER_BOUND = "sensitivity_lower_bound"
RULE_FALLBACK = "capped_point_estimate"


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(logits / T)`` ``(n, K)``; log-probabilities work as logits too."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}; fit it with fit_temperature().")
    z = _as_logits(logits)
    return softmax(z / float(temperature), axis=1)


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true class under ``softmax(logits / T)``."""
    z = _as_logits(logits)
    y = _as_labels(y_true, z)
    logp = log_softmax(z / float(temperature), axis=1)
    return float(-logp[np.arange(y.size), y].mean())


def fit_temperature(
    logits: np.ndarray, y_true: np.ndarray, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature minimising validation NLL (bounded 1-D search on log T; deterministic)."""
    z = _as_logits(logits)
    y = _as_labels(y_true, z)
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds!r}.")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(z, y, math.exp(log_t)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(math.exp(result.x))
    if min(abs(temperature - low), abs(temperature - high)) < 1e-3 * temperature:
        logger.warning("fitted temperature %.4g is at the search bound %s; the logits may be degenerate",
                       temperature, bounds)
    return temperature


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (share of images) * |accuracy - confidence|."""
    data = reliability_data(y_true, probs, bins=bins)
    counts = np.asarray(data["count"], dtype=np.float64)
    gaps = np.abs(np.nan_to_num(np.asarray(data["accuracy"], dtype=np.float64))
                  - np.nan_to_num(np.asarray(data["confidence"], dtype=np.float64)))
    return float((counts * gaps).sum() / counts.sum())


def reliability_data(y_true: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> dict[str, list]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (None when empty) plus the bin ``edges``.

    Bins are right-closed, ``(lo, hi]``, with the first one also holding confidence 0.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}; use e.g. 10.")
    p = np.asarray(probs, dtype=np.float64)
    y = _as_labels(y_true, p)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, mean_acc = conf_sum / count, acc_sum / count
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "count": count.tolist(),
        "confidence": [None if c == 0 else float(v) for c, v in zip(count, mean_conf)],
        "accuracy": [None if c == 0 else float(v) for c, v in zip(count, mean_acc)],
    }


def sensitivity_threshold(
    positive: np.ndarray, scores: np.ndarray, *, target_sensitivity: float
) -> tuple[float, float]:
    """The highest threshold t with sensitivity of ``scores >= t`` at least the target; returns (t, achieved).

    Highest, because every lower threshold flags more negatives for no sensitivity the target asks for.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(
            f"evaluate.malignant_target_sensitivity must lie in (0, 1], got {target_sensitivity!r}; use e.g. 0.9."
        )
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if positive.shape != scores.shape:
        raise ValueError(f"positive has shape {positive.shape!r} but scores has {scores.shape!r}.")
    pos_scores = np.sort(scores[positive])[::-1]
    if pos_scores.size == 0:
        raise ValueError(
            "no positive image in the validation set, so no threshold can reach a sensitivity; "
            "check the split has the class in validation."
        )
    # Flag at least ceil(target * n_pos) positives; the epsilon keeps 0.7 * 10 from rounding up to 8.
    needed = max(1, math.ceil(target_sensitivity * pos_scores.size - 1e-9))
    threshold = float(pos_scores[needed - 1])
    achieved = float((pos_scores >= threshold).mean())
    return threshold, achieved


@dataclass(frozen=True)
class ThresholdChoice:
    """The operating point :func:`choose_threshold` picked, and the facts that say how far to trust it."""

    threshold: float  # flag when the positive class's probability >= threshold
    val_sensitivity: float  # sensitivity of that flag on validation
    val_positives: int  # validation positives it was chosen on
    min_val_positives: int | None  # the fewest :data:`RULE_LOWER_BOUND` accepts here; None: none are enough
    rule: str  # RULE_LOWER_BOUND or RULE_FALLBACK
    reliable: bool  # False: the fallback rule was used; ``reason`` says why
    reason: str | None  # why the threshold is unreliable and what was done instead; None when reliable
    fitted_threshold: float  # :func:`sensitivity_threshold`'s point estimate (what a plain fit would use)
    argmax_cap: float  # the threshold never exceeds this (just under 1/K)
    val_sensitivity_lower_bound: float  # one-sided lower confidence bound of ``val_sensitivity``
    confidence: float  # the level of that bound


def choose_threshold(
    positive: np.ndarray, scores: np.ndarray, *, n_classes: int, target_sensitivity: float, confidence: float,
    min_positives: int = MIN_THRESHOLD_POSITIVES, positive_name: str = "positive",
) -> ThresholdChoice:
    """The operating point on validation: flag when ``scores`` (the positive class's probability) >= the threshold.

    The rule, in order:

    1. Never above the argmax: the threshold is at most :func:`argmax_cap` (just under 1/K, ``K = n_classes``).
       Probabilities sum to 1, so the top class has p >= 1/K: every image whose top class is the positive one is
       flagged, and the flag can never be less sensitive than the argmax.
    2. Reliable (``rule = "sensitivity_lower_bound"``): with enough validation positives, the highest threshold
       whose one-sided Clopper-Pearson lower bound (level ``confidence``) on validation sensitivity is still >=
       ``target_sensitivity``, capped as in 1. "Enough" is ``max(min_positives, n*)`` where ``n*`` is the
       fewest positives for which flagging all of them can reach the bound (``(1 - confidence) ** (1 / n*) >=
       target``: 29 for a 0.9 target at 95%; no sample is enough for a target of 1).
    3. Otherwise unreliable (``rule = "capped_point_estimate"``, ``reliable`` False, ``reason`` says why): the
       highest threshold whose *point* sensitivity reaches the target (:func:`sensitivity_threshold`), capped as
       in 1. Shown everywhere with :func:`threshold_caveat`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}; pass evaluate.ci_level (e.g. 0.95).")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
    fitted, _ = sensitivity_threshold(positive, scores, target_sensitivity=target_sensitivity)
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    pos_scores = np.sort(scores[positive])[::-1]
    n = int(pos_scores.size)
    cap = argmax_cap(int(n_classes))
    # Flagging all n positives gives the highest bound the data allow, (1 - confidence) ** (1 / n); a target of
    # 1 is beyond any finite sample (needed None).
    needed = (max(int(min_positives), math.ceil(math.log(1.0 - confidence) / math.log(target_sensitivity)))
              if target_sensitivity < 1.0 else None)
    if needed is not None and n >= needed:
        k = next(k for k in range(1, n + 1) if _lower_bound(k, n, confidence) >= target_sensitivity)
        threshold, rule, reason = min(float(pos_scores[k - 1]), cap), RULE_LOWER_BOUND, None
    else:
        threshold, rule = min(fitted, cap), RULE_FALLBACK
        why = (f"chosen on {n} validation {positive_name} image(s), fewer than the {needed} needed" if needed
               else
               f"a target of {target_sensitivity:.2f} is beyond any finite validation set, so")
        reason = (f"{why} for a {confidence:.0%} lower confidence bound on sensitivity to reach "
                  f"{target_sensitivity:.2f}; fitted alone the threshold would be {fitted:.3f}, so the rule falls "
                  f"back to that value capped at {cap:.3f} (just under 1/{n_classes}, so every image whose most "
                  f"probable class is {positive_name} is flagged)")
    flagged = int((pos_scores >= threshold).sum())
    return ThresholdChoice(
        threshold=float(threshold), val_sensitivity=flagged / n, val_positives=n, min_val_positives=needed,
        rule=rule, reliable=reason is None, reason=reason, fitted_threshold=float(fitted), argmax_cap=cap,
        val_sensitivity_lower_bound=_lower_bound(flagged, n, confidence), confidence=float(confidence),
    )


def argmax_cap(n_classes: int) -> float:
    """The highest threshold :func:`choose_threshold` uses with ``n_classes`` classes: 1/K rounded down to 6
    decimals and kept under it, so softmax rounding (~1e-16) never puts the top class's probability below it."""
    return math.floor((1.0 / n_classes - 1e-9) * 1e6) / 1e6


def threshold_caveat(record: Mapping[str, Any] | None) -> str | None:
    """The warning to show beside an operating point whose record (operating_point.json, or metrics.json's
    ``operating_point`` block) says ``reliable: false``; None when it is reliable or does not say."""
    if not record or record.get("reliable") is not False:
        return None
    reason = record.get("reason") or "its record gives no reason (re-run the evaluate stage)"
    return f"UNRELIABLE {MALIGNANT} threshold: {reason}."


def _lower_bound(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound of a proportion ``k / n`` at level ``confidence``."""
    return 0.0 if k == 0 else float(beta.ppf(1.0 - confidence, k, n - k + 1))


def _as_logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must have shape (n, K) with n >= 1, got {z.shape!r}.")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or inf; check the model outputs (pass log(p + eps) for probabilities).")
    return z


def _as_labels(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size != scores.shape[0]:
        raise ValueError(f"labels must be 1-D with {scores.shape[0]} entries to match the scores, got {y.shape!r}.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"labels must be integer class indices in 0..{scores.shape[1] - 1}, got {y[:5]!r}...")
    return y.astype(np.int64)
