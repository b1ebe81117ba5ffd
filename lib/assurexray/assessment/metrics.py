"""Classification metrics with vectorised bootstrap confidence intervals.

Labels are integers 0..K-1 and scores are probabilities (rows sum to 1), never logits.
A bootstrap resample is represented by a weight row: how many times each image was drawn. Every metric is
computed for all resamples at once from a ``(B, n)`` weight matrix (the point estimate is the all-ones row),
so 1000 resamples of the whole suite cost a few matrix products and sorts instead of 1000 sklearn calls.
Undefined values (a class absent from a resample, a class never predicted) are NaN, never silently 0.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import precision_recall_curve, roc_curve

from assurexray.core.project import MALIGNANT

logger = logging.getLogger(__name__)

__all__ = [
    "PER_CLASS_METRICS",
    "HEADLINE_METRICS",
    "bootstrap_weights",
    "indices_to_weights",
    "weighted_suite",
    "weighted_binary_auc",
    "point_metrics",
    "suite_with_ci",
    "binary_rates",
    "binary_rates_with_ci",
    "binary_auc_with_ci",
    "proportion_ci",
    "MIN_BOOTSTRAP_COUNT",
    "percentile_ci",
    "ci_value",
    "roc_curves",
    "pr_curves",
]

PER_CLASS_METRICS: tuple[str, ...] = ("auc", "ap", "sensitivity", "specificity", "ppv", "npv", "f1")
HEADLINE_METRICS: tuple[str, ...] = (
    "macro_auc", "macro_ap", "accuracy", "balanced_accuracy", "macro_f1",
    "malignant_sensitivity_argmax", "malignant_specificity_argmax",  # of the top-class call; the operating point's are in operating_point.json
)
_SCALAR_METRICS: tuple[str, ...] = HEADLINE_METRICS[:5]
#: Below this many images in its denominator (positives for a sensitivity, negatives for a specificity) a
#: proportion gets a Wilson score interval: a bootstrap of 3 positives that were all found prints
#: "1.000 (1.000-1.000)", a certainty the data do not hold; Wilson gives (0.44-1.00).
MIN_BOOTSTRAP_COUNT = 20


def bootstrap_weights(
    labels: np.ndarray,
    *,
    resamples: int,
    seed: int,
    groups: np.ndarray | None = None,
    stratified: bool = True,
) -> np.ndarray:
    """Draw ``resamples`` bootstrap resamples as an int weight matrix ``(B, n)`` (times each image is drawn).

    Stratified (default): images are drawn within each class, so every resample keeps the class counts and
    no resample lacks a class. With ``groups`` (cluster bootstrap) whole groups are drawn, so duplicates and
    views of one case stay together; stratified then draws within groups of one label (mixed groups form
    their own stratum).
    """
    labels = _as_labels(labels)
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}; use e.g. 1000.")
    rng = np.random.default_rng(seed)
    n = labels.size
    if groups is None:
        units = np.arange(n)
        strata = labels if stratified else np.zeros(n, dtype=np.int64)
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(
                f"groups has shape {groups.shape!r} but labels has {labels.shape!r}; pass one group per image."
            )
        _, units = np.unique(groups, return_inverse=True)
        strata = _group_strata(units, labels) if stratified else np.zeros(units.max() + 1, dtype=np.int64)
    n_units = int(units.max()) + 1 if n else 0
    unit_counts = np.zeros((resamples, n_units), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws = members[rng.integers(0, members.size, size=(resamples, members.size))]  # (B, n_stratum)
        unit_counts += indices_to_weights(draws, n_units)
    return unit_counts[:, units]  # (B, n): an image inherits its group's count


def indices_to_weights(indices: np.ndarray, n: int) -> np.ndarray:
    """Turn a resample index matrix ``(B, m)`` into counts ``(B, n)`` with one bincount."""
    indices = np.asarray(indices, dtype=np.int64)
    b = indices.shape[0]
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


def weighted_suite(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each weight row: scalars ``(B,)``, per-class ``(B, K)``, ``confusion`` ``(B, K, K)``."""
    y, p = _check_inputs(y_true, probs)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(f"weights must have shape (B, {y.size}), got {w.shape!r}.")
    k = p.shape[1]
    pred = p.argmax(axis=1)
    cells = np.eye(k * k)[y * k + pred]  # (n, K*K) one-hot confusion cell of each image
    conf = (w @ cells).reshape(-1, k, k)  # (B, K, K): rows actual, columns predicted
    total = conf.sum(axis=(1, 2))[:, None]
    tp = np.diagonal(conf, axis1=1, axis2=2)
    row, col = conf.sum(axis=2), conf.sum(axis=1)
    fn, fp = row - tp, col - tp
    tn = total - tp - fn - fp
    out: dict[str, np.ndarray] = {
        "confusion": conf,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    auc, ap = np.empty((w.shape[0], k)), np.empty((w.shape[0], k))
    for c in range(k):
        auc[:, c], ap[:, c] = _ranking_metrics(y == c, p[:, c], w)
    out["auc"], out["ap"] = auc, ap
    out["accuracy"] = _ratio(tp.sum(axis=1), total[:, 0])
    present = row > 0  # balanced accuracy averages recall over the classes present, as sklearn does
    out["balanced_accuracy"] = _ratio(np.where(present, out["sensitivity"], 0.0).sum(axis=1), present.sum(axis=1))
    # Macro averages run over the classes present in the evaluated set: a centre-holdout test set may lack a
    # class altogether (BTXRD's Normal images come from one centre), and its undefined AUC must not void the rest.
    seen = np.bincount(y, minlength=k) > 0
    out["macro_f1"] = out["f1"][:, seen].mean(axis=1)
    out["macro_auc"] = auc[:, seen].mean(axis=1)
    out["macro_ap"] = ap[:, seen].mean(axis=1)
    return out


def point_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The suite on the data as given: scalars as floats, per-class as arrays ``(K,)``, confusion counts."""
    y, _ = _check_inputs(y_true, probs)
    suite = weighted_suite(y_true, probs, np.ones((1, y.size)))
    out: dict[str, Any] = {}
    for name, values in suite.items():
        out[name] = float(values[0]) if values.ndim == 1 else values[0]
    out["confusion"] = np.rint(out["confusion"]).astype(np.int64)
    out["support"] = np.bincount(y, minlength=np.asarray(probs).shape[1])
    return out


def suite_with_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    class_names: list[str] | tuple[str, ...],
    ci_level: float,
    positive_class: str = MALIGNANT,
) -> dict[str, Any]:
    """Headline and per-class CI values, confusion, replicate standard errors and NaN-resample counts.

    Returns the ``headline``/``per_class``/``confusion`` blocks of metrics.json plus ``standard_error``
    (headline metrics) and ``nan_resamples`` (metric -> resamples where it was undefined; only non-zero).
    """
    class_names = list(class_names)
    y, p = _check_inputs(y_true, probs)
    if len(class_names) != p.shape[1]:
        raise ValueError(
            f"class_names has {len(class_names)} names {class_names!r} but probs has {p.shape[1]} columns; "
            "pass one name per column."
        )
    if positive_class not in class_names:
        raise ValueError(f"positive_class {positive_class!r} is not in class_names {class_names!r}.")
    pos = class_names.index(positive_class)
    point = weighted_suite(y, p, np.ones((1, y.size)))
    reps = weighted_suite(y, p, weights)
    scalars = {m: (point[m][0], reps[m]) for m in _SCALAR_METRICS}
    scalars["malignant_sensitivity_argmax"] = (point["sensitivity"][0, pos], reps["sensitivity"][:, pos])
    scalars["malignant_specificity_argmax"] = (point["specificity"][0, pos], reps["specificity"][:, pos])
    nan_counts: dict[str, int] = {}
    headline, std_err = {}, {}
    counts = np.rint(point["confusion"][0]).astype(np.int64)  # (K, K) actual x predicted
    support = counts.sum(axis=1)
    n_total = int(support.sum())
    tp = np.diag(counts)
    tn = n_total - support - counts.sum(axis=0) + tp
    fractions = {"sensitivity": (tp, support), "specificity": (tn, n_total - support)}
    for name in HEADLINE_METRICS:
        value, rep = scalars[name]
        if name in ("malignant_sensitivity_argmax", "malignant_specificity_argmax"):
            k, n = fractions[name.split("_")[1]]
            headline[name] = proportion_ci(value, rep, int(k[pos]), int(n[pos]), ci_level)
        else:
            headline[name] = ci_value(value, rep, ci_level)
        std_err[name] = _none_if_nan(np.nanstd(rep, ddof=1) if np.isfinite(rep).sum() > 1 else np.nan)
        _count_nan(nan_counts, name, rep)
    per_class: dict[str, dict[str, Any]] = {}
    for c, cname in enumerate(class_names):
        entry: dict[str, Any] = {}
        for m in PER_CLASS_METRICS:
            if m in fractions:
                k, n = fractions[m]
                entry[m] = proportion_ci(point[m][0, c], reps[m][:, c], int(k[c]), int(n[c]), ci_level)
            else:
                entry[m] = ci_value(point[m][0, c], reps[m][:, c], ci_level)
            _count_nan(nan_counts, f"{cname}.{m}", reps[m][:, c])
        entry["support"] = int(support[c])
        per_class[cname] = entry
    row_sums = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    if nan_counts:
        logger.warning("bootstrap: metrics undefined in some resamples (excluded from CIs): %s", nan_counts)
    return {
        "headline": headline,
        "per_class": per_class,
        "confusion": {"labels": class_names, "counts": counts.tolist(), "normalized": normalized.tolist()},
        "standard_error": std_err,
        "nan_resamples": nan_counts,
    }


def binary_rates(positive: np.ndarray, flagged: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity ``(B,)`` of binary flags for each weight row (NaN when undefined)."""
    positive = np.asarray(positive, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    if positive.shape != flagged.shape:
        raise ValueError(f"positive has shape {positive.shape!r} but flagged has {flagged.shape!r}.")
    w = np.asarray(weights, dtype=np.float64)
    tp, pos = w @ (positive & flagged), w @ positive
    tn, neg = w @ (~positive & ~flagged), w @ ~positive
    return _ratio(tp, pos), _ratio(tn, neg)


def binary_rates_with_ci(
    positive: np.ndarray, flagged: np.ndarray, weights: np.ndarray, *, ci_level: float
) -> dict[str, dict[str, Any]]:
    """``{"sensitivity": CI, "specificity": CI}`` of binary flags, e.g. Malignant at an operating point.

    Each CI carries ``n`` (its denominator) and ``interval`` (``bootstrap``, or ``wilson`` below
    MIN_BOOTSTRAP_COUNT images, see :func:`proportion_ci`).
    """
    positive, flagged = np.asarray(positive, dtype=bool), np.asarray(flagged, dtype=bool)
    n = positive.size
    (sens0,), (spec0,) = binary_rates(positive, flagged, np.ones((1, n)))
    sens, spec = binary_rates(positive, flagged, weights)
    return {
        "sensitivity": proportion_ci(sens0, sens, int((positive & flagged).sum()), int(positive.sum()), ci_level),
        "specificity": proportion_ci(spec0, spec, int((~positive & ~flagged).sum()), int((~positive).sum()),
                                     ci_level),
    }


def proportion_ci(value: float, replicates: np.ndarray, k: int, n: int, ci_level: float) -> dict[str, Any]:
    """CI value of the proportion ``k / n``: bootstrap percentile, or Wilson score when ``n`` is small.

    With fewer than MIN_BOOTSTRAP_COUNT images the bootstrap collapses (all 3 positives found in every resample),
    so the exact-coverage-friendly Wilson interval (scipy) is used instead and marked ``interval: wilson``.
    """
    if n >= MIN_BOOTSTRAP_COUNT:
        return {**ci_value(value, replicates, ci_level), "n": int(n), "interval": "bootstrap"}
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "interval": "undefined"}
    low, high = binomtest(int(k), int(n)).proportion_ci(confidence_level=ci_level, method="wilson")
    return {"value": _none_if_nan(value), "ci_low": float(low), "ci_high": float(high), "n": int(n),
            "interval": "wilson"}


def binary_auc_with_ci(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray, *,
                       ci_level: float) -> dict[str, Any]:
    """ROC AUC of one binary question (e.g. tumour vs normal) with its bootstrap CI and class counts."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    (point,), _ = _ranking_metrics(positive, scores, np.ones((1, positive.size)))
    reps, _ = _ranking_metrics(positive, scores, np.asarray(weights, dtype=np.float64))
    return {**ci_value(point, reps, ci_level), "n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}


def weighted_binary_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC ``(B,)`` of one binary question for each weight row ``(B, n)`` (a row of ones: the point value)."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    return _ranking_metrics(positive, scores, np.asarray(weights, dtype=np.float64))[0]


def percentile_ci(replicates: np.ndarray, ci_level: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN resamples excluded); NaNs if none is finite."""
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level!r}; use e.g. 0.95.")
    reps = np.asarray(replicates, dtype=np.float64)
    if not np.isfinite(reps).any():
        return float("nan"), float("nan")
    alpha = 100.0 * (1.0 - ci_level) / 2.0
    low, high = np.nanpercentile(reps, [alpha, 100.0 - alpha])
    return float(low), float(high)


def ci_value(value: float, replicates: np.ndarray, ci_level: float) -> dict[str, float | None]:
    """A metrics.json CI value ``{"value", "ci_low", "ci_high"}``; undefined numbers become ``None``."""
    low, high = percentile_ci(replicates, ci_level)
    return {"value": _none_if_nan(value), "ci_low": _none_if_nan(low), "ci_high": _none_if_nan(high)}


def roc_curves(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One-vs-rest ROC curve per class: ``[{"fpr", "tpr", "thresholds"}]`` (empty arrays if undefined)."""
    y, p = _check_inputs(y_true, probs)
    curves = []
    for c in range(p.shape[1]):
        positive = y == c
        if positive.all() or not positive.any():
            curves.append({"fpr": np.array([]), "tpr": np.array([]), "thresholds": np.array([])})
            continue
        fpr, tpr, thr = roc_curve(positive, p[:, c])
        curves.append({"fpr": fpr, "tpr": tpr, "thresholds": thr})
    return curves


def pr_curves(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One-vs-rest precision-recall curve per class: ``[{"recall", "precision", "thresholds"}]``."""
    y, p = _check_inputs(y_true, probs)
    curves = []
    for c in range(p.shape[1]):
        positive = y == c
        if not positive.any():
            curves.append({"recall": np.array([]), "precision": np.array([]), "thresholds": np.array([])})
            continue
        precision, recall, thr = precision_recall_curve(positive, p[:, c])
        curves.append({"recall": recall, "precision": precision, "thresholds": thr})
    return curves


def _ranking_metrics(positive: np.ndarray, scores: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest ROC AUC (Mann-Whitney, ties count 1/2) and average precision for each weight row."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tied-score block
    wo = w[:, order]
    pos_w = np.add.reduceat(wo * positive[order], starts, axis=1)  # (B, U) positive weight per score
    neg_w = np.add.reduceat(wo * ~positive[order], starts, axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    auc = _ratio((pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1), n_pos * n_neg)
    # AP = sum over descending thresholds of (recall increment) * precision, as sklearn defines it.
    tp, fp = np.cumsum(pos_w[:, ::-1], axis=1), np.cumsum(neg_w[:, ::-1], axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    ap = _ratio((pos_w[:, ::-1] * precision).sum(axis=1), n_pos)
    return auc, ap


def _group_strata(units: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Stratum of each group: its label when all its images agree, else -1 (mixed)."""
    n_units = int(units.max()) + 1
    low = np.full(n_units, np.iinfo(np.int64).max)
    high = np.full(n_units, -1)
    np.minimum.at(low, units, labels)
    np.maximum.at(high, units, labels)
    return np.where(low == high, high, -1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _count_nan(counts: dict[str, int], name: str, replicates: np.ndarray) -> None:
    n_nan = int(np.isnan(replicates).sum())
    if n_nan:
        counts[name] = n_nan


def _none_if_nan(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _as_labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {y.shape!r}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices 0..K-1, got dtype {y.dtype!s}; map names first.")
    return y.astype(np.int64)


def _check_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probs must have shape ({y.size}, K) to match labels, got {p.shape!r}.")
    if y.size == 0:
        raise ValueError("no samples: labels and probs are empty; evaluate needs at least one image.")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{p.shape[1] - 1} (one per probability column), got range "
            f"{int(y.min())}..{int(y.max())}."
        )
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4) or (p < 0).any():
        raise ValueError(
            "probs rows must be probabilities summing to 1 (got e.g. row sum "
            f"{float(p[0].sum())!r}); apply softmax to logits first."
        )
    return y, p
