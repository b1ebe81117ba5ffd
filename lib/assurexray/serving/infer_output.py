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
    records = result.records()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=result.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
        text = buffer.getvalue()
    else:
        raise ValueError(f"--output {str(path)!r}: unsupported suffix {path.suffix!r}; use .jsonl or .csv.")
    return write_text(path, text)


def format_table(result: InferenceResult) -> str:
    """Fixed-width terminal table of the successful predictions (failures are summarised separately).

    ``top_class`` is the argmax; ``malignant_flag`` the operating-point decision (:func:`describe_result` says how
    the two relate); ``trained_on`` the model's training data, on every row so no excerpt loses it.
    """
    header = ["path", "top_class", *[f"p_{name}" for name in result.class_names], "malignant_flag", "trained_on"]
    rows = []
    for p in result.predictions:
        if not p.ok:
            continue
        flag = "n/a" if p.malignant_flag is None else ("YES" if p.malignant_flag else "no")
        rows.append([p.path, str(p.pred), *[f"{p.probs[n]:.3f}" for n in result.class_names], flag,
                     result.trained_on])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def describe_result(result: InferenceResult) -> str:
    """Lines printed above the table: the training data, and what the Malignant flag and top_class mean."""
    from assurexray.assessment.decision import threshold_sentence, validation_rates  # pandas + report, only for the CLI

    lines = [training_data_sentence({"data": result.training_data})]
    if result.training_data and result.training_data.get("synthetic"):
        lines.append("This model was trained on SYNTHETIC images: its outputs say nothing about real radiographs.")
    op = result.operating_point
    if op.malignant_threshold is None:
        lines.append("Malignant flag: n/a (no operating point for this model; probabilities uncalibrated, T = 1).")
    else:
        rates = validation_rates(op.source.parent / "predictions.csv") if op.source is not None else None
        split = (result.training_data or {}).get("split")
        lines.append(threshold_sentence(threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity,
                                        split=split, rates=rates))
    lines.append("top_class is the most probable class (argmax); malignant_flag is the separate, deliberately "
                 "sensitive operating-point decision, so it can be YES while another class is on top.")
    return "\n".join(lines)
