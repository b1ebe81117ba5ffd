"""evaluate's adapted rows (``evaluate.adapt: bn``): each unseen centre scored again after BatchNorm adaptation.

For every test centre that no training or validation image comes from (the centre variant's external test),
a copy of the model has its BatchNorm statistics re-estimated (:func:`assurexray.learning.adaptation.adapt_batchnorm`)
on that centre's own test images, and those images are scored with it. This is transductive: the images
adapted on are the images scored, as a site would adapt on its own unlabelled archive. Labels are never read
by the adaptation: :func:`adapt_centers` receives pixels and centre ids only; labels enter afterwards, to score.
The temperature and Malignant threshold are the ones fitted on validation without adaptation (nothing is refitted).

A centre with fewer than :data:`~assurexray.learning.adaptation.MIN_IMAGES` test images is skipped with its
reason; the stratified variant has no unseen centre, so ``by_center`` is empty with the reason said.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from assurexray.assessment.metrics import bootstrap_weights, ci_value, weighted_suite
from assurexray.data.manifests import read_index
from assurexray.learning.adaptation import BATCH_SIZE, MIN_IMAGES, adapt_batchnorm, bn_stats_sha256, images_sha256
from assurexray.learning.calibration import apply_temperature
from assurexray.learning.prediction import Predictor

__all__ = ["AdaptedCenter", "unseen_centers", "adapt_centers", "adapted_metrics"]

logger = logging.getLogger(__name__)

#: Scores one centre's images: (its rows of test.csv, labels (n,), probabilities (n, K)) -> ``{centre: block}``,
#: the block of metrics.json's ``by_center`` (evaluation passes its own, so both rows are computed alike).
CenterScorer = Callable[[pd.DataFrame, np.ndarray, np.ndarray], dict[str, Any]]


@dataclass(frozen=True)
class AdaptedCenter:
    """One centre's adapted logits ``(n, K)`` (before temperature) and what produced them; ``skipped`` says why
    there are none."""

    center: str
    record: dict[str, Any]
    logits: np.ndarray | None = None
    skipped: str | None = None


def unseen_centers(split_dir: str | os.PathLike, test_centers: Iterable[Any]) -> list[str]:
    """Test centres (as text) that no image of ``split_dir``'s train.csv or val.csv comes from, sorted."""
    seen: set[str] = set()
    for partition in ("train", "val"):
        path = Path(split_dir) / f"{partition}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; evaluate.adapt: bn reads the split's train.csv and val.csv to "
                                    "tell which test centres are unseen. Run the split stage (dvc repro split).")
        frame = read_index(path)
        if "center" not in frame.columns:
            raise ValueError(f"{path}: no 'center' column; re-run the split stage.")
        seen |= {str(c) for c in frame["center"]}
    return sorted({str(c) for c in test_centers} - seen)


def adapt_centers(
    predictor: Predictor, images: np.ndarray, centers: np.ndarray, *, adapt: Iterable[str],
    batch_size: int = 64, progress: bool = False,
) -> dict[str, AdaptedCenter]:
    """Adapt every member of ``predictor`` on each centre of ``adapt``'s images and return their logits.

    ``images`` (n, S, S) uint8 letterboxed and ``centers`` (n,) are all it sees: no label reaches this function.
    ``batch_size`` is the scoring batch (evaluate.batch_size); estimation uses the fixed
    :data:`~assurexray.learning.adaptation.BATCH_SIZE`.
    """
    centers = np.asarray([str(c) for c in centers])
    out: dict[str, AdaptedCenter] = {}
    for center in adapt:
        subset = np.ascontiguousarray(images[centers == center])
        record = {"n_images": int(len(subset)), "images_sha256": images_sha256(subset)}
        if len(subset) < MIN_IMAGES:
            reason = f"{len(subset)} test image(s); adaptation needs at least {MIN_IMAGES}"
            logger.warning("centre %s not adapted: %s", center, reason)
            out[center] = AdaptedCenter(center, record, skipped=reason)
            continue
        members = tuple(adapt_batchnorm(m, subset, predictor.transform, batch_size=BATCH_SIZE, min_images=MIN_IMAGES,
                                        source=f"centre {center} test images") for m in predictor.models)
        adapted = replace(predictor, models=members)
        logits = adapted.logits_of(subset, batch_size=batch_size, desc=f"adapted centre {center}", progress=progress)
        record.update(bn_stats_sha256=bn_stats_sha256(members),
                      logits_sha256=hashlib.sha256(np.ascontiguousarray(logits, dtype=np.float32)).hexdigest())
        out[center] = AdaptedCenter(center, record, logits=logits)
    return out


def adapted_metrics(
    config: Any, *, adapted: Mapping[str, AdaptedCenter], test_frame: pd.DataFrame, test_logits: np.ndarray,
    temperature: float, score: CenterScorer,
) -> dict[str, Any]:
    """metrics.json's ``adapted`` block: per adapted centre its ``by_center``-shaped metrics (``score``), the paired
    bootstrap difference of macro AUC (adapted minus unadapted, same resamples) and the adaptation record.

    ``config`` is the :class:`~assurexray.assessment.evaluation.EvaluateConfig` (bootstrap and CI settings).
    """
    centers = test_frame["center"].astype(str).to_numpy()
    y = test_frame["label_idx"].to_numpy().astype(np.int64)
    by_center: dict[str, Any] = {}
    for center, result in adapted.items():
        if result.logits is None:
            by_center[center] = {"skipped": result.skipped, "adaptation": result.record}
            continue
        mask = centers == center
        p_adapted = apply_temperature(result.logits, temperature)
        p_plain = apply_temperature(test_logits[mask], temperature)
        block = score(test_frame[mask], y[mask], p_adapted)[center]
        groups = test_frame["group"].to_numpy()[mask] if config.bootstrap_cluster else None
        w = bootstrap_weights(y[mask], resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
                              groups=groups)  # the resamples of the unadapted by_center row: a paired difference
        ones = np.ones((1, int(mask.sum())))
        point = (weighted_suite(y[mask], p_adapted, ones)["macro_auc"] - weighted_suite(y[mask], p_plain, ones)
                 ["macro_auc"])[0]
        reps = weighted_suite(y[mask], p_adapted, w)["macro_auc"] - weighted_suite(y[mask], p_plain, w)["macro_auc"]
        by_center[center] = {**block, "delta_macro_auc": ci_value(float(point), reps, config.ci_level),
                             "adaptation": result.record}
    out: dict[str, Any] = {
        "method": "bn", "transductive": True, "labels_read": False,
        "adapted_on": "each unseen centre's own test images (pixels only), the images then scored",
        "calibration": "temperature and Malignant threshold fitted on validation without adaptation",
        "min_images": MIN_IMAGES, "batch_size": BATCH_SIZE, "by_center": by_center,
    }
    if not adapted:
        out["reason"] = ("no test centre is unseen (every test centre also gives train or validation images): "
                         "adapting to a centre the model trained on is not site adaptation")
        logger.info("evaluate.adapt: %s", out["reason"])
    return out
