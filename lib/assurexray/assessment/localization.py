"""Quantitative localisation of heatmaps against the radiologists' lesion masks (pure numpy).

Every metric works in the prepared geometry (S, S). Heatmaps are min-max scaled per image to [0, 1], so
thresholds are relative to each image's own peak and not comparable across images in absolute terms.
The letterbox padding counts as part of the image: the mask is 0 there, so attention spent on padding
lowers energy-inside and IoU like attention on any other lesion-free pixel (a model that looks at the
padding is not localising the lesion either).

Degenerate inputs are defined, never NaN: a flat (all-zero) heatmap has no argmax, so it scores a pointing
miss, zero energy and an empty thresholded region (IoU = Dice = 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from assurexray.assessment.metrics import bootstrap_weights

logger = logging.getLogger(__name__)

__all__ = [
    "ContentBox",
    "content_box",
    "pointing_game",
    "energy_inside",
    "iou_dice",
    "localization_scores",
    "score_batch",
    "choose_threshold",
    "gaussian_baseline",
    "rank_correlation",
    "bootstrap_summary",
    "paired_differences",
    "THRESHOLD_GRID",
]

#: Grid searched on the validation partition for the IoU-maximising threshold.
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class ContentBox:
    """The region of the (S, S) prepared image covered by the radiograph: rows y0:y1, columns x0:x1."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def content_box(
    *, scale: float, pad_x: int, pad_y: int, orig_width: int, orig_height: int, size: int
) -> ContentBox:
    """Content region from the index.csv geometry (prepared = orig * scale + pad), clipped to the image."""
    if scale <= 0 or orig_width <= 0 or orig_height <= 0:
        raise ValueError(
            f"letterbox geometry: scale={scale!r}, orig_width={orig_width!r}, orig_height={orig_height!r} "
            "must all be positive; re-run the prepare stage."
        )
    new_w = max(1, min(size - pad_x, int(round(orig_width * scale))))
    new_h = max(1, min(size - pad_y, int(round(orig_height * scale))))
    return ContentBox(y0=int(pad_y), y1=int(pad_y) + new_h, x0=int(pad_x), x1=int(pad_x) + new_w)


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, *, tolerance_px: float = 0.0) -> bool:
    """Hit when the heatmap's peak lies within ``tolerance_px`` (Euclidean) of a mask pixel.

    Equivalent to testing the peak against the mask dilated by a disc of that radius. The peak is the
    first maximum in raster order (np.argmax); a flat map has no peak and misses.
    """
    heatmap, mask = _check_pair(heatmap, mask)
    if tolerance_px < 0:
        raise ValueError(f"pointing_tolerance_px must be >= 0, got {tolerance_px!r}.")
    if not mask.any() or heatmap.max() <= heatmap.min():
        return False
    py, px = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if mask[py, px]:
        return True
    ys, xs = np.nonzero(mask)
    d2 = (ys - py) ** 2 + (xs - px) ** 2
    return bool(d2.min() <= tolerance_px**2)


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass that falls inside the mask (0 for a flat zero map)."""
    heatmap, mask = _check_pair(heatmap, mask)
    total = float(heatmap.sum(dtype=np.float64))
    if total <= 0:
        return 0.0
    return float(heatmap[mask].sum(dtype=np.float64) / total)


def iou_dice(heatmap: np.ndarray, mask: np.ndarray, *, threshold: float) -> tuple[float, float]:
    """IoU and Dice of the region ``heatmap >= threshold`` against the mask (a flat zero map is empty)."""
    heatmap, mask = _check_pair(heatmap, mask)
    region = (heatmap >= threshold) & (heatmap > 0)
    inter = float(np.count_nonzero(region & mask))
    union = float(np.count_nonzero(region | mask))
    total = float(np.count_nonzero(region) + np.count_nonzero(mask))
    iou = inter / union if union else 0.0
    dice = 2.0 * inter / total if total else 0.0
    return iou, dice


def localization_scores(
    heatmap: np.ndarray, mask: np.ndarray, *, thresholds: Sequence[float], tolerance_px: float
) -> dict[str, float]:
    """All per-image metrics: ``pointing_game``, ``energy_inside``, ``iou@t`` and ``dice@t`` per threshold."""
    scores: dict[str, float] = {
        "pointing_game": float(pointing_game(heatmap, mask, tolerance_px=tolerance_px)),
        "energy_inside": energy_inside(heatmap, mask),
    }
    for t in thresholds:
        scores[f"iou@{t:g}"], scores[f"dice@{t:g}"] = iou_dice(heatmap, mask, threshold=t)
    return scores


def score_batch(
    heatmaps: np.ndarray,
    masks: np.ndarray,
    *,
    thresholds: Sequence[float],
    tolerance_px: float,
    val_threshold: float,
) -> dict[str, np.ndarray]:
    """Per-image metric columns for a stack of maps: ``localization_scores`` plus ``iou@val``/``dice@val``."""
    columns = ["pointing_game", "energy_inside", *[f"{m}@{t:g}" for t in thresholds for m in ("iou", "dice")],
               "iou@val", "dice@val"]
    out = {c: np.zeros(len(heatmaps), dtype=np.float64) for c in columns}
    for i, (heatmap, mask) in enumerate(zip(heatmaps, masks)):
        scores = localization_scores(heatmap, mask, thresholds=thresholds, tolerance_px=tolerance_px)
        scores["iou@val"], scores["dice@val"] = iou_dice(heatmap, mask, threshold=val_threshold)
        for c in columns:
            out[c][i] = scores[c]
    return out


def choose_threshold(
    heatmaps: np.ndarray, masks: np.ndarray, *, grid: Sequence[float] = THRESHOLD_GRID
) -> float:
    """Threshold of ``grid`` with the highest mean IoU over the images (ties: the smallest).

    Chosen on the validation partition and then applied unchanged on test, so the test IoU is not tuned
    on the data it reports.
    """
    if len(heatmaps) == 0:
        raise ValueError("choose_threshold: no images with a lesion mask to choose a threshold on.")
    if not grid:
        raise ValueError("choose_threshold: the threshold grid is empty; pass at least one threshold.")
    means = [np.mean([iou_dice(h, m, threshold=t)[0] for h, m in zip(heatmaps, masks)]) for t in grid]
    return float(grid[int(np.argmax(means))])


def gaussian_baseline(box: ContentBox, *, size: int, sigma: float) -> np.ndarray:
    """A heatmap that knows nothing about the image: a Gaussian centred on the content region.

    ``sigma`` is a fraction of the content's width (x) and height (y); zero on the padding; peak 1.
    Lesions are often central in radiographs, so a model must beat this to claim it localises anything.
    """
    if sigma <= 0:
        raise ValueError(f"explain.baseline_sigma must be > 0 (fraction of the side), got {sigma!r}.")
    ys = np.arange(box.y0, box.y1, dtype=np.float64)
    xs = np.arange(box.x0, box.x1, dtype=np.float64)
    cy, cx = (box.y0 + box.y1 - 1) / 2.0, (box.x0 + box.x1 - 1) / 2.0
    gy = np.exp(-0.5 * ((ys - cy) / (sigma * box.height)) ** 2)
    gx = np.exp(-0.5 * ((xs - cx) / (sigma * box.width)) ** 2)
    out = np.zeros((size, size), dtype=np.float32)
    patch = np.outer(gy, gx)
    out[box.y0 : box.y1, box.x0 : box.x1] = patch / patch.max()
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (average ranks for ties).

    A constant map ranks nothing: against a non-constant map the correlation is defined as 0 (no
    agreement; a randomised model often yields an all-zero Grad-CAM), and it is NaN when both are constant.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation: maps differ in size ({a.size} vs {b.size} pixels).")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom > 0:
        return float((ra * rb).sum() / denom)
    return float("nan") if not ra.any() and not rb.any() else 0.0


def bootstrap_summary(
    values: Mapping[str, np.ndarray], *, groups: np.ndarray | None, resamples: int, seed: int,
    ci_level: float = 0.95,
) -> dict[str, dict[str, float | None] | int]:
    """Mean and percentile bootstrap CI of each per-image metric, plus ``n``.

    ``groups`` (one case group per image) makes it a cluster bootstrap: whole case groups are drawn, since
    views and duplicates of one case are not independent; ``None`` draws images (only where no grouping
    exists). All metrics share the same resamples (paired). With no images every value is None, never NaN.
    """
    names = list(values)
    table = np.column_stack([np.asarray(values[k], dtype=np.float64) for k in names]) if names else None
    weights = _resample_weights(0 if table is None else table.shape[0], groups=groups, resamples=resamples,
                                seed=seed, ci_level=ci_level)
    out: dict[str, dict[str, float | None] | int] = {}
    if weights is None:
        for k in names:
            out[k] = {"value": None, "ci_low": None, "ci_high": None}
        out["n"] = 0
        return out
    if np.isnan(table).any():
        bad = [k for k, col in zip(names, table.T) if np.isnan(col).any()]
        raise ValueError(f"bootstrap_summary: NaN values in {bad}; drop undefined images before summarising.")
    means = (weights @ table) / weights.sum(axis=1, keepdims=True)  # (resamples, n_metrics)
    alpha = (1.0 - ci_level) / 2.0
    lows, highs = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    for j, k in enumerate(names):
        out[k] = {"value": float(table[:, j].mean()), "ci_low": float(lows[j]), "ci_high": float(highs[j])}
    out["n"] = int(table.shape[0])
    return out


def paired_differences(
    first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray], *, groups: np.ndarray | None,
    resamples: int, seed: int, ci_level: float = 0.95,
) -> dict[str, dict[str, float | None] | int]:
    """Mean of ``first[k] - second[k]`` per metric with a paired cluster-bootstrap CI, plus ``n``.

    The two maps of one image are compared on the same resamples (the difference is resampled, not each arm
    on its own), and whole case groups are drawn, so the interval covers test-set sampling of cases.
    """
    if set(first) != set(second):
        raise ValueError(f"paired_differences: metrics differ ({sorted(first)} vs {sorted(second)}).")
    diffs = {}
    for k in first:
        a, b = np.asarray(first[k], dtype=np.float64), np.asarray(second[k], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"paired_differences: {k!r} has {a.shape} vs {b.shape} images; pair the same images.")
        diffs[k] = a - b
    return bootstrap_summary(diffs, groups=groups, resamples=resamples, seed=seed, ci_level=ci_level)


def _resample_weights(n: int, *, groups: np.ndarray | None, resamples: int, seed: int,
                      ci_level: float) -> np.ndarray | None:
    """(resamples, n) counts of each image per resample (whole groups when ``groups``); None for n = 0."""
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"explain.bootstrap_resamples must be >= 1, got {resamples!r}.")
    if not 0 < ci_level < 1:
        raise ValueError(f"explain.ci_level must be in (0, 1), got {ci_level!r}.")
    if n == 0:
        return None
    if groups is not None and len(groups) != n:
        raise ValueError(f"bootstrap: {len(groups)} group ids for {n} images; pass one case group per image.")
    return bootstrap_weights(np.zeros(n, dtype=np.int64), resamples=resamples, seed=seed,
                             groups=None if groups is None else np.asarray(groups), stratified=False)


def _check_pair(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap)
    mask = np.asarray(mask) > 0
    if heatmap.ndim != 2 or heatmap.shape != mask.shape:
        raise ValueError(
            f"heatmap {heatmap.shape} and mask {mask.shape} must be 2-D arrays of the same (S, S) shape; "
            "map both to the prepared geometry first."
        )
    return heatmap, mask


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as scipy.stats.rankdata 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse].astype(np.float64)
