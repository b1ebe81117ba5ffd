"""Stability under invisible changes: how far a re-saved copy of the same radiograph moves the probabilities.

A new user re-saves radiographs without a thought (PNG, JPEG quality 90, a slightly smaller export, 16-bit), and
centres 2 and 3 of BTXRD are web-collected, i.e. exactly such re-encoded files; a model whose answer moves with
them is answering the codec, not the bone (issue 32; goal: median <= 0.02 for every perturbation).

Each original is decoded in full by the product's reader (``assurexray.data.decoding.read_for_letterbox`` with no
size); that decode is the reference. Each perturbation writes a file made from it, reads the file back exactly as
``assurexray infer`` reads one (``read_for_letterbox`` at the model's input size: JPEG draft decode, letterbox in
the file's geometry) and scores reference and copy with the same :class:`~assurexray.learning.prediction.Predictor`
(the checkpoint's preprocessing, its evaluate operating point: temperature, mirror TTA, lesion fusion). Per
perturbation: the max and median over images of the max-over-classes |change in probability|, how many predicted
classes (and Malignant flags) flip, and the mean |change| of the normalised input tensor. The PNG row is the
control (lossless: exactly 0); the ``draft`` row is the original file itself as infer reads it (a JPEG is decoded
at a reduced DCT scale), and ``jpeg90_vs_draft`` compares the JPEG copy with that read (both as infer reads them):
together they separate the reader's share of the JPEG row from the codec's.

Diagnostic (not the product's probabilities): the same figures with the checkpoint's CLAHE setting flipped, and the
input-tensor change both ways, to see whether CLAHE amplifies codec noise before anyone retrains against it.

    python -m benchmarks.stability                                    # models/center/model.pt on btxrd-mini
    python -m benchmarks.stability --model M.pt --images DIR --limit 10 --out stability.json

NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from assurexray.core.atomic import write_json
from assurexray.core.cli_errors import run_stage
from assurexray.core.provenance import trained_on
from assurexray.data.decoding import find_images, read_for_letterbox
from assurexray.learning.prediction import OperatingPoint, Predictor, Scores, load_predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "center" / "model.pt"  # the centre-holdout model: unseen-hospital figures
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "btxrd-mini"  # 30 real BTXRD originals (read-only fixture)
GOAL_MEDIAN = 0.02  # issue 32: median over images of max-over-classes |change in probability|, per perturbation
RESIZE_FACTOR = 0.9
JPEG_QUALITY = 90
CLINICAL_NOTE = "NOT FOR CLINICAL USE: a research benchmark of model behaviour, not a diagnostic device."
DIAGNOSTIC_CAVEAT = ("diagnostic only: the model was trained with clahe={trained}, so probabilities computed with "
                     "clahe={flipped} are not the product's; compare them with each other, not with the rows above.")


@dataclass(frozen=True)
class Perturbation:
    """One invisible change: ``make(gray, original, folder)`` writes the changed file and returns its path.

    It is scored against the full decode of the original, or with ``against`` against another perturbation's read
    (``"draft"``: the original file as infer reads it), so a row can isolate one cause.
    """

    name: str
    description: str
    make: Callable[[np.ndarray, Path, Path], Path]
    control: bool = False
    against: str | None = None


def _png(gray: np.ndarray, _original: Path, folder: Path) -> Path:
    path = folder / "copy.png"
    Image.fromarray(gray).save(path, compress_level=1)  # lossless whatever the level; 1 is fastest
    return path


def _jpeg(gray: np.ndarray, _original: Path, folder: Path) -> Path:
    path = folder / "copy.jpeg"
    Image.fromarray(gray).save(path, quality=JPEG_QUALITY)
    return path


def _resized(gray: np.ndarray, _original: Path, folder: Path) -> Path:
    height, width = gray.shape
    size = (max(1, round(width * RESIZE_FACTOR)), max(1, round(height * RESIZE_FACTOR)))
    path = folder / "resized.png"  # PNG, so the row measures the resize alone, not a codec on top
    Image.fromarray(gray).resize(size, Image.LANCZOS).save(path, compress_level=1)
    return path


def _sixteen_bit(gray: np.ndarray, _original: Path, folder: Path) -> Path:
    path = folder / "copy16.png"
    # x257 maps 0..255 onto 0..65535 exactly (255 * 257 = 65535): the same picture, as an 8->16 bit export makes it.
    Image.fromarray(gray.astype(np.uint16) * 257).save(path, compress_level=1)
    return path


def _original_file(_gray: np.ndarray, original: Path, _folder: Path) -> Path:
    return original


#: The perturbations, in table order; the first is the control.
PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("png", "lossless PNG round trip (control: must be exactly 0)", _png, control=True),
    Perturbation("jpeg90", f"re-encoded as JPEG quality {JPEG_QUALITY}", _jpeg),
    Perturbation("resize0.9", f"{RESIZE_FACTOR:g}x resize (PIL LANCZOS), saved as PNG", _resized),
    Perturbation("png16", "16-bit PNG export (8-bit value x 257) instead of 8-bit", _sixteen_bit),
    Perturbation("draft", "the original file as infer reads it (JPEG draft decode) vs its full decode", _original_file),
    Perturbation("jpeg90_vs_draft", f"JPEG quality {JPEG_QUALITY} copy vs the original, both read as infer reads "
                 "them (the codec alone)", _jpeg, against="draft"),
)
PERTURBATION_NAMES = tuple(p.name for p in PERTURBATIONS)


@dataclass(frozen=True)
class Letterboxed:
    """The model inputs ``(n, S, S)`` of the references and of each perturbation's files, image by image."""

    names: tuple[str, ...]
    reference: np.ndarray
    perturbed: dict[str, np.ndarray]


def image_files(folder: str | Path, *, limit: int | None = None) -> list[Path]:
    """Radiographs of ``folder`` (its ``images/`` when it is laid out as a BTXRD release), sorted; ``limit`` first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: image folder not found. Pass --images DIR, a folder of radiographs (or a BTXRD release "
            "laid out with images/, such as the 30-image excerpt ../shared/btxrd-mini).")
    root = folder / "images" if (folder / "images").is_dir() else folder
    files, problems = find_images([root])
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit!r}.")
    return files[:limit]


def letterbox_all(predictor: Predictor, files: Sequence[Path],
                  perturbations: Sequence[Perturbation] = PERTURBATIONS) -> Letterboxed:
    """Decode each original, write its perturbed copies to a temporary folder, read them back as infer does.

    One image at a time, so a 4000 px original and its copies are the only full-size pixels in memory.
    """
    size = predictor.input_size
    reference, perturbed = [], {p.name: [] for p in perturbations}
    with tempfile.TemporaryDirectory(prefix="stability-") as tmp:
        for path in files:
            full = read_for_letterbox(path, None)  # the product's reader, full decode: the reference pixels
            reference.append(predictor.letterbox([full])[0])
            for perturbation in perturbations:
                copy = perturbation.make(full.gray, path, Path(tmp))
                perturbed[perturbation.name].append(predictor.letterbox([read_for_letterbox(copy, size)])[0])
    root = Path(os.path.commonpath([f.parent for f in files]))
    return Letterboxed(tuple(f.relative_to(root).as_posix() for f in files), np.stack(reference),
                       {name: np.stack(boxes) for name, boxes in perturbed.items()})


def measure(predictor: Predictor, boxes: Letterboxed,
            perturbations: Sequence[Perturbation] = PERTURBATIONS) -> dict[str, dict[str, Any]]:
    """Per perturbation: probability change (max, median), flips and input-tensor change under ``predictor``."""
    scores = {None: predictor.predict(boxes.reference)}
    inputs = {None: _inputs(predictor, boxes.reference)}  # (n, C, S, S)
    for name, perturbed in boxes.perturbed.items():
        scores[name], inputs[name] = predictor.predict(perturbed), _inputs(predictor, perturbed)
    found = {}
    for p in perturbations:
        reference, changed = scores[p.against], scores[p.name]
        change = np.abs(changed.probs - reference.probs).max(axis=1)  # (n,) max over classes
        found[p.name] = {
            "max_abs_change": float(change.max()),
            "median_abs_change": float(np.median(change)),
            "class_flips": int((changed.pred_idx != reference.pred_idx).sum()),
            "malignant_flag_flips": _flag_flips(reference, changed),
            "input_mean_abs_change": float((inputs[p.name] - inputs[p.against]).abs().mean()),
            "per_image": {image: round(float(c), 6) for image, c in zip(boxes.names, change)},
        }
    return found


def run_benchmark(predictor: Predictor, files: Sequence[Path]) -> dict[str, Any]:
    """The JSON record: the product's figures per perturbation, then the CLAHE-flipped diagnostic."""
    boxes = letterbox_all(predictor, files)
    clahe = bool(predictor.meta.get("clahe", False))
    flipped = replace(predictor, meta={**predictor.meta, "clahe": not clahe})  # a new instance: its own transform
    product, diagnostic = measure(predictor, boxes), measure(flipped, boxes)
    rows = []
    for p in PERTURBATIONS:
        row = {"name": p.name, "description": p.description, "control": p.control,
               "against": p.against or "full decode of the original", **product[p.name]}
        row["meets_goal"] = row["median_abs_change"] <= GOAL_MEDIAN
        row["input_mean_abs_change_clahe_flipped"] = diagnostic[p.name]["input_mean_abs_change"]
        rows.append(row)
    op = predictor.operating_point
    return {
        "note": CLINICAL_NOTE,
        "model": str(predictor.model_paths[0]),
        "model_sha256": predictor.model_sha256,
        "trained_on": trained_on(predictor.meta),
        "clahe": clahe,
        "input_size": predictor.input_size,
        "operating_point": {"source": None if op.source is None else str(op.source), "temperature": op.temperature,
                            "malignant_threshold": op.malignant_threshold, "tta_flip": op.tta_flip,
                            "lesion_fusion_weight": op.lesion_fusion_weight},
        "images": os.path.commonpath([str(f.parent) for f in files]),
        "n_images": len(files),
        "goal": f"median_abs_change <= {GOAL_MEDIAN} for every perturbation",
        "perturbations": rows,
        "diagnostic": {
            "clahe": not clahe,
            "caveat": DIAGNOSTIC_CAVEAT.format(trained=clahe, flipped=not clahe),
            "perturbations": [{"name": p.name, **diagnostic[p.name]} for p in PERTURBATIONS],
        },
    }


def format_tables(record: dict[str, Any]) -> str:
    """Markdown: the product's table, then the diagnostic table with its caveat."""
    head = ("| perturbation | max abs change | median abs change | class flips | Malignant-flag flips "
            "| mean abs input change | same, clahe={flipped} | median <= {goal} |")
    clahe, flipped, n = record["clahe"], record["diagnostic"]["clahe"], record["n_images"]
    lines = [f"Stability over {n} images, {record['model']} (trained on {record['trained_on']}, clahe={clahe}). "
             f"{CLINICAL_NOTE}", "", head.format(flipped=flipped, goal=GOAL_MEDIAN), "|---" * 8 + "|"]
    for row in record["perturbations"]:
        met = "yes" if row["meets_goal"] else "**no**"
        lines.append(f"| {row['name']} | {row['max_abs_change']:.4f} | {row['median_abs_change']:.4f} | "
                     f"{row['class_flips']}/{n} | {_count(row['malignant_flag_flips'], n)} | "
                     f"{row['input_mean_abs_change']:.4f} | {row['input_mean_abs_change_clahe_flipped']:.4f} | {met} |")
    lines += ["", f"Diagnostic, clahe={flipped}: {record['diagnostic']['caveat']}", "",
              "| perturbation | max abs change | median abs change | class flips |", "|---|---|---|---|"]
    for row in record["diagnostic"]["perturbations"]:
        lines.append(f"| {row['name']} | {row['max_abs_change']:.4f} | {row['median_abs_change']:.4f} | "
                     f"{row['class_flips']}/{n} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder of radiographs, or a BTXRD layout with images/ (default: %(default)s)")
    parser.add_argument("--operating-point", default=None,
                        help="operating_point.json (default: the model's evaluate output in its project; "
                             "'none': temperature 1, no Malignant decision)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here (atomically)")
    args = parser.parse_args(argv)
    files = image_files(args.images, limit=args.limit)  # before loading a model: a missing folder fails fast
    operating_point = OperatingPoint() if args.operating_point == "none" else args.operating_point
    predictor = load_predictor(args.model, operating_point=operating_point)
    record = run_benchmark(predictor, files)
    print(format_tables(record))
    if args.out is not None:
        write_json(args.out, record)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _inputs(predictor: Predictor, boxed: np.ndarray) -> torch.Tensor:
    """The normalised model inputs ``(n, C, S, S)`` of letterboxed uint8 images ``(n, S, S)``."""
    return torch.stack([predictor.transform(image=image)["image"] for image in boxed])


def _flag_flips(reference: Scores, scores: Scores) -> int | None:
    if reference.malignant_flag is None:
        return None  # no Malignant threshold in the operating point: no decision to flip
    return int((scores.malignant_flag != reference.malignant_flag).sum())


def _count(flips: int | None, n: int) -> str:
    return "n/a" if flips is None else f"{flips}/{n}"


if __name__ == "__main__":
    raise SystemExit(run_stage(main, prog="python -m benchmarks.stability"))
