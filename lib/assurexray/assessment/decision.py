"""The two answers a prediction gives, put into words once for ``assurexray infer`` and the web demo.

A prediction carries (1) the most probable class (argmax of the calibrated probabilities) and (2) the
Malignant flag at the operating point: P(Malignant) >= a threshold chosen on the *validation* partition to
reach a target sensitivity (:func:`assurexray.learning.calibration.choose_threshold`). The threshold never exceeds
1/K, so every image with Malignant on top is flagged, and the flag can also fire while Normal or Benign is the most
probable class; shown side by side without saying so, "Normal (p = 0.41)" and "FLAGGED as Malignant" read as a
contradiction. A threshold chosen on too few validation Malignant images is marked unreliable in
operating_point.json; its caveat (``OperatingPoint.caveat``) goes wherever the threshold is shown. Every number
here comes from operating_point.json, evaluate's predictions.csv (the validation rows) or metrics.json;
sensitivity is never shown without specificity. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from assurexray.core.project import MALIGNANT
from assurexray.core.rendering import fmt_ci
from assurexray.learning.calibration import argmax_cap

__all__ = ["ValidationRates", "validation_rates", "threshold_sentence", "decision_sentence", "top_class_sentence",
           "flags_every_top_malignant", "sensitivity_claim"]



@dataclass(frozen=True)
class ValidationRates:
    """Sensitivity/specificity of the Malignant flag on the validation rows of predictions.csv."""

    sensitivity: float | None
    specificity: float | None
    n_malignant: int
    n_other: int


def validation_rates(predictions_csv: str | os.PathLike) -> ValidationRates | None:
    """The flag's rates on ``partition == val`` rows of evaluate's predictions.csv; None when the file is absent."""
    path = Path(predictions_csv)
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"label": str, "partition": str}, keep_default_na=False)
    missing = [c for c in ("partition", "label", "malignant_flag") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; re-run the evaluate stage (dvc repro evaluate).")
    val = frame[frame["partition"] == "val"]
    positive, flagged = val["label"] == MALIGNANT, val["malignant_flag"].astype(int) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return ValidationRates(
        sensitivity=float((flagged & positive).sum() / n_pos) if n_pos else None,
        specificity=float((~flagged & ~positive).sum() / n_neg) if n_neg else None,
        n_malignant=n_pos, n_other=n_neg,
    )


def threshold_sentence(
    *,
    threshold: float,
    target_sensitivity: float | None,
    split: str | None,
    rates: ValidationRates | None,
    test: Mapping[str, Any] | None = None,
    caveat: str | None = None,
) -> str:
    """Where the threshold comes from and how it did: validation sensitivity and specificity, test ones if given.

    ``split`` is the split variant whose validation partition chose it (the checkpoint's ``meta["data"]["split"]``);
    ``test`` is metrics.json's ``operating_point`` block (``test_sensitivity``/``test_specificity`` CI values);
    ``caveat`` (``OperatingPoint.caveat``: an unreliable threshold's warning) is put first, so it cannot be missed.
    """
    where = f"the validation partition of the {split} split" if split else "the model's validation partition"
    target = f" to reach sensitivity >= {target_sensitivity:.2f}" if target_sensitivity is not None else ""
    text = f"Malignant flag when P(Malignant) >= {threshold:.3f}: a threshold chosen on {where}{target}"
    if rates is None:
        text += " (validation sensitivity/specificity unavailable: evaluate's predictions.csv not found)"
    else:
        text += (f"; on validation, sensitivity {_rate(rates.sensitivity)} ({rates.n_malignant} Malignant images) "
                 f"and specificity {_rate(rates.specificity)} ({rates.n_other} other images)")
    if test and test.get("test_sensitivity") is not None:
        text += (f"; on test, sensitivity {fmt_ci(test.get('test_sensitivity'))} and specificity "
                 f"{fmt_ci(test.get('test_specificity'))}")
    return f"{caveat} {text}." if caveat else text + "."


def flags_every_top_malignant(threshold: float, n_classes: int) -> bool:
    """True when every image whose most probable class is Malignant is flagged: the threshold is at most
    :func:`~assurexray.learning.calibration.argmax_cap` (the top class has p >= 1/K). ``choose_threshold`` always
    caps it so; an older or hand-written operating point may not be, and then the text must not say so."""
    return threshold <= argmax_cap(n_classes)


def sensitivity_claim(*, reliable: bool | None, target_sensitivity: float | None) -> str | None:
    """What may be said about the flag's sensitivity, from how its threshold was chosen: a clause for a threshold
    marked reliable (the lower-bound rule), None for an unreliable one or one whose record does not say, so no
    "sensitive" or "misses few tumours" claim is ever made without the data that back it."""
    if reliable is not True:
        return None
    target = f"{target_sensitivity:.2f}" if target_sensitivity is not None else "the target"
    return f"its threshold was chosen so that a lower confidence bound on validation sensitivity reaches {target}"


def top_class_sentence(probs: Mapping[str, float], pred: str) -> str:
    """``Most probable class (argmax): Normal (p = 0.407)``."""
    return f"Most probable class (argmax): {pred} (p = {probs[pred]:.3f})"


def decision_sentence(probs: Mapping[str, float], *, flag: int | None, threshold: float | None) -> str:
    """The operating-point decision in one line, and why it may differ from the most probable class."""
    if flag is None or threshold is None or MALIGNANT not in probs:
        return "Malignant flag: no decision (no operating point for this model; probabilities uncalibrated)"
    p = probs[MALIGNANT]
    verdict = "FLAGGED as possibly Malignant" if flag else "not flagged as Malignant"
    relation = ">=" if flag else "<"
    return f"Malignant flag at the operating point: {verdict} (P(Malignant) = {p:.3f} {relation} {threshold:.3f})"


def _rate(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
