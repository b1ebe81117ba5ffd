"""Calibration: temperature scaling, expected calibration error, reliability data, operating points.

Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599) divides the logits by one scalar
T fitted on validation by minimising the negative log-likelihood; it changes confidence, never the argmax.
The Malignant operating point is picked on validation and then only *applied* to test, so the test
sensitivity is an honest estimate of what the threshold achieves on unseen images.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

logger = logging.getLogger(__name__)

__all__ = [
    "apply_temperature",
    "fit_temperature",
    "negative_log_likelihood",
    "expected_calibration_error",
    "reliability_data",
    "sensitivity_threshold",
]

#: Search interval of the temperature (T < 1 sharpens, T > 1 softens); bounded so the fit cannot run away.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


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
