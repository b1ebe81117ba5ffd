"""The lesion map's evidence in the Normal-vs-tumour decision (``evaluate.lesion_fusion: score``).

The centre-holdout failure is one of finding tumours: unseen-centre tumours are called Normal. The lesion decoder
was trained on pixels to say where a tumour is; its strongest cell says how sure it is that one is there at all.
Fusion moves that evidence into the classifier's logits: the Normal logit becomes ``z_Normal - w * s`` with
``s = logit(max lesion probability)``, so both tumour classes gain against Normal alike and Benign-vs-Malignant is
untouched. ``w`` is chosen on validation from a fixed grid and applied only when it clears a fixed gain
(reports/lesion-map/preregistration.md, 2026-12-08 addendum); ``w = 0`` is the unfused model, exactly.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

__all__ = ["FUSION_MODES", "WEIGHT_GRID", "MIN_VAL_GAIN", "FusionChoice", "tumour_presence", "fuse_logits",
           "choose_fusion_weight"]

FUSION_MODES: tuple[str, ...] = ("none", "score")
#: Candidate weights, fixed before any result; 0 first (the unfused model wins ties).
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0)
#: Validation macro-AUC gain over w = 0 a weight must reach to be applied.
MIN_VAL_GAIN = 0.005
#: Lesion probabilities are clipped to [EPS, 1 - EPS] before the logit, so one saturated cell cannot dominate.
EPS = 1e-4


@dataclass(frozen=True)
class FusionChoice:
    """The weight applied (0 = off), the validation macro AUC of every grid weight, and why."""

    weight: float
    val_macro_auc: dict[float, float]
    best_weight: float
    gain: float
    reason: str

    @property
    def on(self) -> bool:
        return self.weight > 0

    def record(self) -> dict:
        """metrics.json's ``lesion_fusion`` block (JSON keys are text)."""
        return {"mode": "score", "on": self.on, "weight": self.weight, "best_weight": self.best_weight,
                "val_gain": self.gain, "min_val_gain": MIN_VAL_GAIN, "grid": list(WEIGHT_GRID),
                "val_macro_auc": {f"{w:g}": auc for w, auc in self.val_macro_auc.items()}, "reason": self.reason,
                "presence": "logit of the lesion map's maximum probability (clipped to [1e-4, 1 - 1e-4])",
                "chosen_on": "validation macro AUC at temperature 1, before calibration"}


def tumour_presence(lesion_max: np.ndarray) -> np.ndarray:
    """``s = logit(max lesion probability)`` per image, from the maps' maxima ``(n,)`` in [0, 1]."""
    p = np.clip(np.asarray(lesion_max, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fuse_logits(logits: np.ndarray, presence: np.ndarray, *, weight: float, normal_index: int) -> np.ndarray:
    """``logits`` ``(n, K)`` with ``weight * presence`` subtracted from the Normal column (a copy; w = 0: unchanged)."""
    fused = np.array(logits, dtype=np.float64, copy=True)
    if weight:
        fused[:, normal_index] -= weight * np.asarray(presence, dtype=np.float64)
    return fused.astype(np.asarray(logits).dtype, copy=False)


def choose_fusion_weight(y: np.ndarray, logits: np.ndarray, presence: np.ndarray, *, normal_index: int,
                         grid: Sequence[float] = WEIGHT_GRID, min_gain: float = MIN_VAL_GAIN) -> FusionChoice:
    """The validation rule: the grid weight of highest macro AUC, applied iff it beats w = 0 by ``min_gain``."""
    if not grid or grid[0] != 0:
        raise ValueError(f"fusion grid {list(grid)!r} must start with 0 (the unfused model).")
    y = np.asarray(y)
    k = logits.shape[1]
    if len(np.unique(y)) < k:
        raise ValueError(f"lesion fusion: validation holds {len(np.unique(y))} of {k} classes; the macro AUC that "
                         "chooses the weight needs every class in validation.")
    aucs = {float(w): float(roc_auc_score(y, softmax(fuse_logits(logits, presence, weight=w,
                                                                  normal_index=normal_index), axis=1),
                                          multi_class="ovr", average="macro", labels=list(range(k))))
            for w in grid}
    best = max(aucs, key=lambda w: (aucs[w], -w))  # ties: the smaller weight
    gain = aucs[best] - aucs[0.0]
    if best > 0 and gain >= min_gain:
        return FusionChoice(best, aucs, best, gain, f"w = {best:g} raises validation macro AUC by {gain:+.4f} "
                                                    f"(>= {min_gain}): on")
    return FusionChoice(0.0, aucs, best, gain, f"best w = {best:g} gains {gain:+.4f} on validation macro AUC "
                                               f"(< {min_gain} needed): off")
