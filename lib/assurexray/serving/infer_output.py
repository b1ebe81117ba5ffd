"""How an :class:`assurexray.serving.infer.InferenceResult` is shown and written: the terminal table, the lines above it,
the ``--json`` document and the ``--output`` file (JSON Lines or CSV). Kept apart from scoring so formatting needs
no model. All of them read :meth:`InferenceResult.records`, so a column has one name and one value everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from assurexray import DISCLAIMER
from assurexray.core.atomic import write_text
from assurexray.core.provenance import training_data_sentence

if TYPE_CHECKING:  # infer imports torch; the formatting here never needs it
    from assurexray.serving.infer import InferenceResult

__all__ = ["OUTPUT_SUFFIXES", "TABLE_COLUMNS", "write_predictions", "format_json", "format_table", "describe_result"]

#: ``--output`` file types: JSON Lines or CSV.
OUTPUT_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv")
#: The columns of :meth:`InferenceResult.columns` the terminal table shows (``prob_<class>`` stands for each class),
#: in this order, when the result has them; the rest are in ``--output`` / ``--json``.
TABLE_COLUMNS: tuple[str, ...] = ("path", "pred", "prob_<class>", "malignant_flag", "lesion_score", "trained_on")


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


def format_json(result: InferenceResult) -> str:
    """``--json``: one JSON object, ``{"disclaimer", "notes": [the lines above the table], "predictions": [one
    record per input, the fields and values of the .jsonl --output]}``, failed inputs included (``error``)."""
    document = {"disclaimer": DISCLAIMER, "notes": describe_result(result).splitlines(),
                "predictions": result.records()}
    return json.dumps(document, indent=2, allow_nan=False)


def format_table(result: InferenceResult) -> str:
    """Fixed-width terminal table of the successful predictions (failures are summarised separately).

    The columns are :data:`TABLE_COLUMNS`, named and valued as in ``--output`` (probabilities and the lesion score
    rounded to 3 decimals, a missing value as ``null``): ``pred`` is the argmax, ``malignant_flag`` the
    operating-point decision (1/0; :func:`describe_result` says how the two relate), ``trained_on`` on every row so
    no excerpt loses it.
    """
    columns = _table_columns(result)
    rows = [[_table_cell(record[c]) for c in columns]
            for record in result.records() if record["error"] is None]
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [columns, *rows]]
    return "\n".join(lines)


def _table_columns(result: InferenceResult) -> list[str]:
    available = result.columns()
    shown = []
    for column in TABLE_COLUMNS:
        if column == "prob_<class>":
            shown += [f"prob_{name}" for name in result.class_names]
        elif column in available:
            shown.append(column)
    return shown


def _table_cell(value: object) -> str:
    """A record value as the table prints it: JSON spelling, floats to 3 decimals."""
    if isinstance(value, float):
        return f"{value:.3f}"
    return value if isinstance(value, str) else json.dumps(value)


def _input_check_line(result: InferenceResult) -> str:
    """What input_distance / input_unfamiliar mean for this model, and which inputs the check flags."""
    from assurexray.assessment.familiarity import UNFAMILIAR_WARNING  # torch + sklearn: imported on first use

    check = result.input_check
    if check is None:
        return ("input_distance, input_unfamiliar: null (no input check for this model: the evaluate stage's "
                "familiarity.npz beside its operating point was not found).")
    flagged = [p.path for p in result.predictions if p.input_unfamiliar]
    rule = (f"input_unfamiliar is true when input_distance (docs/input-check.md) exceeds {check.threshold:.1f}, the "
            f"{check.quantile:g} quantile of the validation images' distances")
    if not flagged:
        return f"{rule}; no input is flagged."
    shown = ", ".join(flagged[:5]) + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
    return f"{rule}. {len(flagged)} input(s) are {UNFAMILIAR_WARNING}: {shown}."


def describe_result(result: InferenceResult) -> str:
    """Lines printed above the table: the training data, the Malignant threshold (an unreliable one's caveat
    first) and how malignant_flag relates to pred, claiming only what the operating point's record backs."""
    from assurexray.assessment.decision import (  # pandas + report, only for the CLI
        flags_every_top_malignant,
        sensitivity_claim,
        threshold_sentence,
        validation_rates,
    )

    lines = [training_data_sentence({"data": result.training_data})]
    if result.training_data and result.training_data.get("synthetic"):
        lines.append("This model was trained on SYNTHETIC images: its outputs say nothing about real radiographs.")
    lines.append(_input_check_line(result))
    op = result.operating_point
    if op.malignant_threshold is None:
        lines.append("malignant_flag: null (no operating point for this model; probabilities uncalibrated, T = 1).")
        lines.append("pred is the most probable class (argmax).")
    else:
        rates = validation_rates(op.source.parent / "predictions.csv") if op.source is not None else None
        split = (result.training_data or {}).get("split")
        lines.append(threshold_sentence(threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity,
                                        split=split, rates=rates, caveat=op.caveat))
        if flags_every_top_malignant(op.malignant_threshold, len(result.class_names)):
            relation = ("malignant_flag is 1 for every image whose pred is Malignant, and can also be 1 while "
                        "another class is on top")
        else:  # an operating point from before the 1/K cap: the two answers can disagree either way
            relation = ("malignant_flag is the separate operating-point decision (P(Malignant) >= "
                        f"{op.malignant_threshold:.3f}): it can be 1 while another class is on top, and 0 "
                        "while Malignant is on top")
        claim = sensitivity_claim(reliable=op.reliable, target_sensitivity=op.target_sensitivity)
        lines.append(f"pred is the most probable class (argmax); {relation}" + (f"; {claim}." if claim else "."))
    if result.lesion_maps:
        lines.append("lesion_score is the maximum of the model's lesion map, its estimate of where a tumour is "
                     "(research only, NOT FOR CLINICAL USE); lesion_box (in --output and --json) bounds the pixels "
                     "with p >= lesion_threshold in the original image's pixels, empty when none reaches it.")
    return "\n".join(lines)
