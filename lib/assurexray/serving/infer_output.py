"""How an :class:`assurexray.serving.infer.InferenceResult` is shown and written: the terminal table, the lines above it,
and the ``--output`` file (JSON Lines or CSV). Kept apart from scoring so formatting needs no model.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from assurexray.core.atomic import write_text
from assurexray.core.provenance import training_data_sentence

if TYPE_CHECKING:  # infer imports torch; the formatting here never needs it
    from assurexray.serving.infer import InferenceResult

__all__ = ["OUTPUT_SUFFIXES", "write_predictions", "format_table", "describe_result"]

#: ``--output`` file types: JSON Lines or CSV.
OUTPUT_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv")


def write_predictions(result: InferenceResult, path: str | os.PathLike) -> Path:
    """Write ``result`` as JSON Lines (``.jsonl``) or CSV (``.csv``), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in result.records())
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=result.columns(), lineterminator="\n")
        writer.writeheader()
        rows = result.records(box_columns=True)  # the lesion box as four columns: CSV cells hold no lists
        writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in rows)
        text = buffer.getvalue()
    else:
        raise ValueError(f"--output {str(path)!r}: unsupported suffix {path.suffix!r}; use .jsonl or .csv.")
    return write_text(path, text)


def _csv_cell(value: object) -> object:
    """None as an empty cell, booleans as JSON spells them (``true``/``false``), so both files read the same."""
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else value


def format_table(result: InferenceResult) -> str:
    """Fixed-width terminal table of the successful predictions (failures are summarised separately).

    ``top_class`` is the argmax; ``malignant_flag`` the operating-point decision (:func:`describe_result` says how
    the two relate); ``trained_on`` the model's training data, on every row so no excerpt loses it;
    ``lesion_score`` (a model with a lesion decoder only) the lesion map's maximum.
    """
    lesion = ["lesion_score"] if result.lesion_maps else []
    header = ["path", "top_class", *[f"p_{name}" for name in result.class_names], "malignant_flag", *lesion,
              "trained_on"]
    rows = []
    for p in result.predictions:
        if not p.ok:
            continue
        flag = "n/a" if p.malignant_flag is None else ("YES" if p.malignant_flag else "no")
        score = [f"{p.lesion.score:.3f}"] if result.lesion_maps else []
        rows.append([p.path, str(p.pred), *[f"{p.probs[n]:.3f}" for n in result.class_names], flag, *score,
                     result.trained_on])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def describe_result(result: InferenceResult) -> str:
    """Lines printed above the table: the training data, the Malignant threshold (an unreliable one's caveat
    first) and how malignant_flag relates to top_class, claiming only what the operating point's record backs."""
    from assurexray.assessment.decision import (  # pandas + report, only for the CLI
        flags_every_top_malignant,
        sensitivity_claim,
        threshold_sentence,
        validation_rates,
    )

    lines = [training_data_sentence({"data": result.training_data})]
    if result.training_data and result.training_data.get("synthetic"):
        lines.append("This model was trained on SYNTHETIC images: its outputs say nothing about real radiographs.")
    op = result.operating_point
    if op.malignant_threshold is None:
        lines.append("Malignant flag: n/a (no operating point for this model; probabilities uncalibrated, T = 1).")
        lines.append("top_class is the most probable class (argmax).")
    else:
        rates = validation_rates(op.source.parent / "predictions.csv") if op.source is not None else None
        split = (result.training_data or {}).get("split")
        lines.append(threshold_sentence(threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity,
                                        split=split, rates=rates, caveat=op.caveat))
        if flags_every_top_malignant(op.malignant_threshold, len(result.class_names)):
            relation = ("malignant_flag is set for every image whose top class is Malignant, and can also be YES "
                        "while another class is on top")
        else:  # an operating point from before the 1/K cap: the two answers can disagree either way
            relation = ("malignant_flag is the separate operating-point decision (P(Malignant) >= "
                        f"{op.malignant_threshold:.3f}): it can be YES while another class is on top, and no "
                        "while Malignant is on top")
        claim = sensitivity_claim(reliable=op.reliable, target_sensitivity=op.target_sensitivity)
        lines.append(f"top_class is the most probable class (argmax); {relation}" + (f"; {claim}." if claim else "."))
    if result.lesion_maps:
        lines.append("lesion_score is the maximum of the model's lesion map, its estimate of where a tumour is "
                     "(research only, NOT FOR CLINICAL USE); lesion_box (in --output) bounds the pixels with "
                     "p >= lesion_threshold in the original image's pixels, empty when none reaches it.")
    return "\n".join(lines)
