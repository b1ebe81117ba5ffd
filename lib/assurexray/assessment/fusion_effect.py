"""What lesion fusion did on test: fused minus unfused, paired on the same case-group resamples.

evaluate's main rows score the model as the validation rule left it (fused when the rule switched fusion on);
this block sets the unfused model beside it on the same test images, overall and per centre, for macro AUC and
for the question fusion targets (tumour vs normal), so a reader sees the switch's effect, not only its result.
The weight was chosen on validation (:func:`assurexray.learning.lesion_fusion.choose_fusion_weight`); nothing
here chooses anything. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from assurexray.assessment.metrics import bootstrap_weights, ci_value, weighted_binary_auc, weighted_suite
from assurexray.core.project import NORMAL
from assurexray.learning.lesion_fusion import FusionChoice

__all__ = ["fusion_effect"]


def fusion_effect(config: Any, *, choice: FusionChoice, test_frame: pd.DataFrame, y_test: np.ndarray,
                  p_plain: np.ndarray, p_fused: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """metrics.json's ``lesion_fusion`` block: the validation choice and the paired test differences.

    ``p_plain`` / ``p_fused`` are the calibrated test probabilities without and with fusion (each with the
    temperature fitted on its own validation logits). ``config`` is the EvaluateConfig (bootstrap settings).
    With fusion off the two are the same model, and every difference is exactly 0.
    """
    centers = test_frame["center"].astype(str).to_numpy()
    groups = test_frame["group"].to_numpy() if config.bootstrap_cluster else None
    out = {**choice.record(), "test": _paired(config, y_test, p_plain, p_fused, groups, class_names),
           "by_center": {}}
    for center in sorted(set(centers)):
        mask = centers == center
        out["by_center"][center] = _paired(config, y_test[mask], p_plain[mask], p_fused[mask],
                                           None if groups is None else groups[mask], class_names)
    return out


def _paired(config: Any, y: np.ndarray, p_plain: np.ndarray, p_fused: np.ndarray, groups: np.ndarray | None,
            class_names: list[str]) -> dict[str, Any]:
    """Fused and unfused macro AUC and tumour-vs-normal AUC with the paired difference (fused minus unfused)."""
    w = bootstrap_weights(y, resamples=config.bootstrap_resamples, seed=config.bootstrap_seed, groups=groups)
    ones = np.ones((1, y.size))
    out: dict[str, Any] = {"n": int(y.size)}
    if len(np.unique(y)) > 1:
        plain, fused = weighted_suite(y, p_plain, ones)["macro_auc"][0], weighted_suite(y, p_fused, ones)["macro_auc"][0]
        reps = weighted_suite(y, p_fused, w)["macro_auc"] - weighted_suite(y, p_plain, w)["macro_auc"]
        out["macro_auc"] = {"unfused": float(plain), "fused": float(fused),
                            "delta": ci_value(float(fused - plain), reps, config.ci_level)}
    normal = class_names.index(NORMAL)
    tumour = y != normal
    if 0 < tumour.sum() < y.size:
        (plain,), (fused,) = (weighted_binary_auc(tumour, 1.0 - p[:, normal], ones) for p in (p_plain, p_fused))
        reps = (weighted_binary_auc(tumour, 1.0 - p_fused[:, normal], w)
                - weighted_binary_auc(tumour, 1.0 - p_plain[:, normal], w))
        out["tumour_vs_normal_auc"] = {"unfused": float(plain), "fused": float(fused),
                                       "delta": ci_value(float(fused - plain), reps, config.ci_level)}
    return out
