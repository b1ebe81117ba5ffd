"""Page logic of the Streamlit demo (``app/app.py``), kept free of Streamlit so it is tested directly.

Prediction goes through the engine of ``assurexray infer`` and evaluate (:func:`assurexray.serving.infer.predict_images`
over :class:`assurexray.learning.prediction.Predictor`): the same decoding (``read_gray_bytes``, DICOM via
``assurexray.data.dicom``), preprocessing, temperature, Malignant threshold, Grad-CAM overlay and, for a model with
a lesion head, the lesion map with its score and box, so the page shows what the CLI would print. The results view
only reads files the pipeline wrote, where :class:`assurexray.core.project.Layout` says they are (schemas in
docs/ARCHITECTURE.md).

Privacy: nothing about users is stored or written. An upload is decoded, classified and drawn in memory;
no file is created. NOT FOR CLINICAL USE.
Over 400 lines on purpose: all of the demo's page logic (results tables, figures, upload decisions) in one
Streamlit-free module, so ``app/app.py`` stays a thin layout and every view is tested directly.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from assurexray.assessment.decision import (
    decision_sentence,
    flags_every_top_malignant,
    sensitivity_claim,
    threshold_sentence,
    top_class_sentence,
    validation_rates,
)
from assurexray.core.project import (  # one owner each: the CLI, report and pipeline read the same facts
    DATASET_SUFFIXES,
    INFER_SUFFIXES,
    MALIGNANT,
    ROOT_ENV,
    VARIANT_TITLES,
    VARIANTS,
    Layout,
    read_json,
)
from assurexray.core.provenance import trained_on, training_data_sentence
from assurexray.core.rendering import fmt, fmt_ci
from assurexray.learning.calibration import threshold_caveat
from assurexray.publishing.report_sections import HEADLINE_TITLES, THRESHOLD_RULE

if TYPE_CHECKING:  # torch-heavy; imported on first use at run time (see decode_upload)
    from assurexray.data.decoding import Fitted
    from assurexray.serving.infer import Prediction
    from assurexray.serving.lesion import LesionFinding
    from assurexray.learning.prediction import OperatingPoint

__all__ = [
    "ROOT_ENV",
    "VARIANTS",
    "VARIANT_TITLES",
    "UPLOAD_TYPES",
    "MAX_UPLOAD_MB",
    "UPLOAD_LABEL",
    "MAX_PIXELS",
    "DISPLAY_MAX_SIDE",
    "RESULTS_COMMAND",
    "LESION_CAPTION",
    "EVAL_FIGURES",
    "WIDE_FIGURES",
    "Layout",
    "AppPrediction",
    "VariantResults",
    "Results",
    "project_root",
    "available_models",
    "Sample",
    "held_out_images",
    "check_upload",
    "decode_upload",
    "predict_upload",
    "predict_file",
    "decision_text",
    "top_class_text",
    "threshold_text",
    "training_text",
    "TrainingNotice",
    "training_notices",
    "input_check_text",
    "original_panel",
    "lesion_panel",
    "thumbnail",
    "load_results",
    "missing_message",
    "format_ci",
    "headline_rows",
    "operating_point_rows",
    "threshold_caveats",
    "calibration_rows",
    "localization_rows",
    "figure_pairs",
    "gradcam_figures",
]

logger = logging.getLogger(__name__)

#: File types the uploader accepts (suffixes without the dot): exactly what ``assurexray infer`` reads.
UPLOAD_TYPES: tuple[str, ...] = tuple(s.lstrip(".") for s in INFER_SUFFIXES)
#: Largest upload, MB (passed to st.file_uploader and checked again here; AppTest bypasses the widget).
MAX_UPLOAD_MB = 50
#: The uploader's label: the accepted types and the size limit, said before the user picks a file.
UPLOAD_LABEL = (
    f"Radiograph ({', '.join(t.upper() for t in UPLOAD_TYPES)}; single-frame; at most {MAX_UPLOAD_MB} MB)"
)
#: Largest image, pixels (50 MP: above any radiograph detector; refuses decompression bombs from the header).
MAX_PIXELS = 50_000_000
#: Long side of images sent to the browser, px (overlays from assurexray.serving.infer are at most 1024 px too).
DISPLAY_MAX_SIDE = 1024
#: The command that creates every file the app reads.
RESULTS_COMMAND = "dvc repro"
#: The words every lesion map on the page is shown with (:func:`lesion_panel` gives no map without them).
LESION_CAPTION = "Lesion map: the model's estimate of where a tumour is (research only, NOT FOR CLINICAL USE)"
#: Evaluation figures written by the evaluate stage into plots/<variant>/eval/, with their titles.
EVAL_FIGURES: tuple[tuple[str, str], ...] = (
    ("ROC curves (one-vs-rest, test)", "eval/roc.png"),
    ("Precision-recall curves (test)", "eval/pr.png"),
    ("Confusion matrix (test)", "eval/confusion.png"),
    ("Calibration (reliability diagram)", "eval/reliability.png"),
    ("Grad-CAM gallery overview", "gradcam/overview.png"),
)
#: Figures of several panels each, shown one variant at a time at full width (side by side they are unreadable).
WIDE_FIGURES: frozenset[str] = frozenset({"Confusion matrix (test)", "Grad-CAM gallery overview"})
_SAMPLE_SUFFIXES = DATASET_SUFFIXES  # test images offered by the picker: any radiograph the dataset holds
_MB = 1024 * 1024  # Streamlit's maxUploadSize megabyte


@dataclass(frozen=True)
class AppPrediction:
    """One classified image: ``assurexray infer``'s :class:`~assurexray.serving.infer.Prediction` and the operating point
    that produced it (held, not copied), plus the pictures the page shows."""

    name: str
    outcome: Prediction  # probabilities, top class and Malignant flag, exactly as the CLI reports them
    op: OperatingPoint  # temperature, threshold and its target sensitivity (operating_point.json)
    model_sha256: str
    gray: np.ndarray  # (H, W) uint8, the decoded radiograph
    overlay: np.ndarray  # (h, w, 3) uint8, Grad-CAM of the predicted class under the disclaimer banner
    training_data: dict[str, Any] | None = None  # the checkpoint's meta["data"] (assurexray.core.provenance)
    lesion_overlay: np.ndarray | None = None  # (h, w, 3) uint8 lesion map of a lesion-head model; else None
    input_check_threshold: float | None = None  # the input check's validation threshold; None: no familiarity.npz

    @property
    def lesion(self) -> LesionFinding | None:
        """The lesion score and box (original pixels) of a model with a lesion head; None without one."""
        return self.outcome.lesion

    @property
    def probs(self) -> dict[str, float]:
        return dict(self.outcome.probs or {})

    @property
    def pred(self) -> str:
        return str(self.outcome.pred)

    @property
    def malignant_flag(self) -> int | None:
        return self.outcome.malignant_flag

    @property
    def malignant_threshold(self) -> float | None:
        return self.op.malignant_threshold

    @property
    def temperature(self) -> float:
        return self.op.temperature

    @property
    def operating_point(self) -> Path | None:
        return self.op.source

    @property
    def target_sensitivity(self) -> float | None:
        return self.op.target_sensitivity

    @property
    def trained_on(self) -> str:
        return trained_on({"data": self.training_data})


@dataclass(frozen=True)
class TrainingNotice:
    """What trained one variant's model, for the top of every page (before any number the page shows)."""

    variant: str
    text: str
    warn: bool  # synthetic or unknown training data: shown as a warning, not small print


@dataclass(frozen=True)
class Sample:
    """A test-partition image offered by the picker: where it is and what the split says about it."""

    path: Path
    label: str
    partition: str  # always "test": images the model never trained or chose its threshold on
    split: str

    def title(self) -> str:
        return f"{self.path.name} ({self.partition} partition of the {self.split} split, true label {self.label})"


@dataclass(frozen=True)
class VariantResults:
    """The files one variant's evaluate/explain stages wrote (None / absent where not yet run)."""

    variant: str
    eval_metrics: dict[str, Any] | None
    explain_metrics: dict[str, Any] | None
    plots_dir: Path


@dataclass(frozen=True)
class Results:
    """Everything the results view shows; ``missing`` lists the expected files not found."""

    root: Path
    variants: dict[str, VariantResults]
    compare: dict[str, Any] | None
    missing: list[Path] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.compare is not None or any(v.eval_metrics is not None for v in self.variants.values())


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """The root named by ``$ASSUREXRAY_ROOT``, else the current directory (where ``dvc repro`` ran)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ROOT_ENV, "").strip()
    if not value:
        return Path.cwd()
    root = Path(value).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{ROOT_ENV}={value!r}: no such directory; point it at the project root (the folder holding "
            "models/, metrics/ and plots/) or unset it to use the current directory."
        )
    return root.resolve()


def available_models(layout: Layout) -> list[str]:
    """Variants whose ``models/<variant>/model.pt`` exists, in :data:`VARIANTS` order."""
    return [v for v in VARIANTS if layout.model(v).is_file()]


def held_out_images(layout: Layout, variant: str) -> list[Sample]:
    """Images of ``variant``'s TEST partition (``data/splits/<variant>/test.csv``) found in ``data/raw/images``.

    Only test images: a training image would show the model at its best on what it memorised, and a
    validation image chose its threshold. Empty when the split or the images are absent.
    """
    path = layout.split_test(variant)
    if not path.is_file() or not layout.samples.is_dir():
        return []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("image_id", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}, found {reader.fieldnames!r}; re-run `dvc repro split`."
            )
        rows = [(row["image_id"], row["label"]) for row in reader]
    return [Sample(layout.samples / image_id, label, "test", variant) for image_id, label in sorted(rows)
            if Path(image_id).suffix.lower() in _SAMPLE_SUFFIXES and (layout.samples / image_id).is_file()]


def check_upload(name: str, data: bytes, *, max_mb: int = MAX_UPLOAD_MB) -> str:
    """Refuse empty, oversized or wrongly typed uploads before decoding; return the lower-case suffix."""
    if not data:
        raise ValueError(f"{name!r}: the file is empty (0 bytes); upload a JPEG, PNG or DICOM radiograph.")
    if len(data) > max_mb * _MB:
        raise ValueError(
            f"{name!r}: {len(data) / _MB:.1f} MB exceeds the upload limit of {max_mb} MB; "
            "downscale or re-compress the image."
        )
    suffix = Path(name).suffix.lower()
    if suffix.lstrip(".") not in UPLOAD_TYPES:
        allowed = ", ".join(f".{t}" for t in UPLOAD_TYPES)
        raise ValueError(f"{name!r}: unsupported file type {suffix or '(none)'!r}; upload one of {allowed}.")
    return suffix


def decode_upload(
    name: str, data: bytes, *, max_pixels: int = MAX_PIXELS, max_mb: int = MAX_UPLOAD_MB
) -> np.ndarray:
    """Decode uploaded bytes to uint8 (H, W) in memory with ``assurexray.data.decoding.read_gray_bytes`` (DICOM included).

    Nothing is written to disk. Raises ``ValueError`` naming the upload: not an image, corrupt, over ``max_mb``
    or ``max_pixels``, a decompression bomb, multi-frame DICOM.
    """
    from assurexray.data.decoding import read_gray_bytes  # PIL/pydicom; imported on first use so the results view is quick

    check_upload(name, data, max_mb=max_mb)
    return read_gray_bytes(data, name=repr(name), max_pixels=max_pixels)


def predict_upload(
    name: str,
    data: bytes,
    *,
    layout: Layout,
    variant: str,
    max_pixels: int = MAX_PIXELS,
    max_mb: int = MAX_UPLOAD_MB,
) -> AppPrediction:
    """Classify uploaded bytes with ``variant``'s model, in memory; ``ValueError`` naming the upload when it is bad."""
    from assurexray.data.decoding import read_bytes_for_letterbox  # see decode_upload

    gray = decode_upload(name, data, max_pixels=max_pixels, max_mb=max_mb)  # checked, and shown in full

    def fitted(size: int) -> Fitted:  # scored as infer decodes a file (JPEG draft mode)
        return read_bytes_for_letterbox(data, size, name=repr(name), max_pixels=max_pixels)

    return _predict(gray, fitted, name=name, layout=layout, variant=variant)


def predict_file(
    path: str | os.PathLike, *, layout: Layout, variant: str, max_pixels: int = MAX_PIXELS
) -> AppPrediction:
    """Classify an image file already on disk (a sample image) with ``variant``'s model."""
    from assurexray.data.decoding import read_for_letterbox, read_gray  # see decode_upload

    path = Path(path)

    def fitted(size: int) -> Fitted:
        return read_for_letterbox(path, size, max_pixels=max_pixels)

    return _predict(read_gray(path, max_pixels=max_pixels), fitted, name=path.name, layout=layout, variant=variant)


def decision_text(prediction: AppPrediction, *, layout: Layout, variant: str) -> str:
    """The Malignant operating-point decision in one sentence, or why there is none."""
    if prediction.malignant_threshold is None or MALIGNANT not in prediction.probs:
        where = layout.operating_point(variant).relative_to(layout.root)
        return (
            f"No Malignant decision: operating point {where} not found, so probabilities are uncalibrated "
            f"(temperature 1). Run `{RESULTS_COMMAND}` to create it."
        )
    return decision_sentence(prediction.probs, flag=prediction.malignant_flag,
                             threshold=prediction.malignant_threshold) + "."


def top_class_text(prediction: AppPrediction) -> str:
    """``Most probable class (argmax): Normal (p = 0.407)``."""
    return top_class_sentence(prediction.probs, prediction.pred)


def threshold_text(prediction: AppPrediction, *, layout: Layout, variant: str) -> str:
    """Where the threshold was chosen and its validation (and test) sensitivity and specificity, led by an
    unreliable threshold's caveat, then how the flag relates to the most probable class; '' without a threshold.

    Validation rates come from the val rows of ``metrics/<variant>/eval/predictions.csv``, test rates from
    ``metrics.json`` (both written by the evaluate run that wrote the operating point). A sensitivity claim is
    made only for a threshold marked reliable (:func:`assurexray.assessment.decision.sensitivity_claim`).
    """
    op = prediction.op
    if op.malignant_threshold is None:
        return ""
    metrics_path = layout.eval_metrics(variant)
    test = _read_json(metrics_path).get("operating_point") if metrics_path.is_file() else None
    split = (prediction.training_data or {}).get("split") or variant
    text = threshold_sentence(
        threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity, split=split,
        rates=validation_rates(layout.predictions(variant)), test=test, caveat=op.caveat,
    )
    if flags_every_top_malignant(op.malignant_threshold, len(prediction.probs)):
        relation = ("it is set for every image whose most probable class is Malignant, and can also fire while "
                    "another class has the highest probability")
    else:  # an operating point from before the 1/K cap
        relation = ("it can fire while another class has the highest probability, and stay off while Malignant "
                    "has it")
    claim = sensitivity_claim(reliable=op.reliable, target_sensitivity=op.target_sensitivity)
    return (f"{text} The flag answers a different question from the most probable class: {relation}"
            + (f"; {claim}." if claim else "."))


def training_text(prediction: AppPrediction) -> str:
    """What the model was trained on (a warning-worthy sentence for the synthetic sample)."""
    return training_data_sentence({"data": prediction.training_data})


def training_notices(layout: Layout) -> list[TrainingNotice]:
    """One notice per variant: what trained its model, read from the checkpoint's own record (``meta["data"]``,
    written by the train stage), never guessed from params.yaml or folder names. Without any model, one notice
    saying the training data cannot be checked, so no page shows numbers without saying where they come from."""
    notices = []
    for variant in VARIANTS:
        path = layout.model(variant)
        if not path.is_file():
            continue
        title = VARIANT_TITLES.get(variant, variant)
        try:
            data = _checkpoint_data(str(path), path.stat().st_mtime_ns, path.stat().st_size)
        except ValueError as err:
            notices.append(TrainingNotice(variant, f"{title} model: training data unknown ({err}).", warn=True))
            continue
        text = f"{title} model: {training_data_sentence({'data': data})}"
        warn = not isinstance(data, Mapping) or not data.get("source") or bool(data.get("synthetic"))
        if isinstance(data, Mapping) and data.get("synthetic"):
            text += " Its numbers and predictions say nothing about real patients."
        notices.append(TrainingNotice(variant, text, warn=warn))
    if not notices:
        notices.append(TrainingNotice(
            "", f"No trained model found, so what any result here was trained on cannot be checked; run "
                f"`{RESULTS_COMMAND}` to train the models.", warn=True))
    return notices


def input_check_text(prediction: AppPrediction) -> tuple[bool, str]:
    """(warn, sentence): how unlike the training images the input is (:mod:`assurexray.assessment.familiarity`),
    or that the model has no input check. ``warn`` is True for an unfamiliar input and for a missing check."""
    from assurexray.assessment.familiarity import UNFAMILIAR_WARNING  # torch-heavy; see decode_upload

    outcome = prediction.outcome
    if outcome.input_unfamiliar is None or outcome.input_distance is None or prediction.input_check_threshold is None:
        return True, ("No input check for this model (metrics/<variant>/eval/familiarity.npz absent): nothing "
                      f"says whether this image is like the training images. Run `{RESULTS_COMMAND}` to create it.")
    numbers = (f"input distance {outcome.input_distance:.1f}, threshold {prediction.input_check_threshold:.1f} "
               "chosen on the validation images")
    if outcome.input_unfamiliar:
        return True, f"This image is {UNFAMILIAR_WARNING} ({numbers})."
    return False, (f"Input check: this image is within the range of the validation images ({numbers}); a "
                   "familiar image can still be misclassified.")


def original_panel(prediction: AppPrediction) -> np.ndarray:
    """The decoded radiograph on the overlay's canvas (same size and banner), for side-by-side display."""
    from assurexray.assessment.gallery import render_original  # matplotlib; see decode_upload

    return render_original(prediction.gray, caption=f"{prediction.name} (decoded, grayscale)")


def lesion_panel(prediction: AppPrediction) -> tuple[np.ndarray, str] | None:
    """The lesion map overlay and its caption (:data:`LESION_CAPTION`, the score and the box), or None for a
    model without a lesion head. One function gives both, so the page cannot show the map without the words."""
    from assurexray.serving.lesion import finding_sentence  # torch-heavy; see decode_upload

    if prediction.lesion_overlay is None or prediction.lesion is None:
        return None
    return prediction.lesion_overlay, f"{LESION_CAPTION}. {finding_sentence(prediction.lesion)}"


def thumbnail(image: np.ndarray, *, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """A copy of ``image`` (H, W[, 3]) uint8 whose long side is at most ``max_side`` px, for display only:
    a 50 MP radiograph would otherwise be re-encoded and sent to the browser in full."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1 px, got {max_side!r}.")
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def load_results(layout: Layout) -> Results:
    """Read both variants' evaluate/explain metrics and compare.json; absent files are listed in ``missing``."""
    missing: list[Path] = []
    variants = {}
    for variant in VARIANTS:
        eval_path, explain_path = layout.eval_metrics(variant), layout.explain_metrics(variant)
        eval_metrics = _read_json(eval_path) if eval_path.is_file() else None
        explain_metrics = _read_json(explain_path) if explain_path.is_file() else None
        missing += [p for p, d in ((eval_path, eval_metrics), (explain_path, explain_metrics)) if d is None]
        variants[variant] = VariantResults(variant, eval_metrics, explain_metrics, layout.plots(variant))
    compare = _read_json(layout.compare) if layout.compare.is_file() else None
    if compare is None:
        missing.append(layout.compare)
    return Results(root=layout.root, variants=variants, compare=compare, missing=missing)


def missing_message(results: Results) -> str:
    """What is missing and the command that creates it ('' when nothing is)."""
    if not results.missing:
        return ""
    names = ", ".join(str(p.relative_to(results.root)) for p in results.missing[:3])
    more = f" and {len(results.missing) - 3} more" if len(results.missing) > 3 else ""
    state = "Some pipeline results are missing" if results.any else "No pipeline results yet"
    return f"{state} under {results.root}: {names}{more}. Run `{RESULTS_COMMAND}` there to create them."


def format_ci(value: Mapping[str, Any] | float | int | None) -> str:
    """The report's formats (:func:`assurexray.publishing.report.fmt_ci`, :func:`assurexray.publishing.report.fmt`), so the app, the
    report and the comparison write an interval the same way: ``0.812 (0.751–0.866)``; ``n/a`` when absent."""
    if isinstance(value, Mapping):
        return fmt_ci(value) if _finite(value.get("value")) else "n/a"
    return fmt(float(value)) if _finite(value) else "n/a"


def headline_rows(results: Results) -> list[dict[str, str]]:
    """Headline metrics side by side, with the generalisation gap from compare.json where present."""
    headline_gap = (results.compare or {}).get("headline", {})
    names = _ordered_keys([(v.eval_metrics or {}).get("headline", {}) for v in results.variants.values()])
    rows = []
    for name in names:
        row = {"metric": HEADLINE_TITLES.get(name, name)}
        for variant, vr in results.variants.items():
            row[variant] = format_ci((vr.eval_metrics or {}).get("headline", {}).get(name))
        row["gap (stratified - center)"] = format_ci(headline_gap.get(name, {}).get("gap"))
        rows.append(row)
    return rows


def operating_point_rows(results: Results) -> list[dict[str, str]]:
    """The Malignant operating point of each variant: threshold (chosen on that variant's validation partition),
    how it was chosen (metrics.json's ``rule``, in the report's words) and an unreliable one's caveat, validation
    sensitivity and specificity (specificity from the val rows of predictions.csv), test both."""
    blocks = {v: (vr.eval_metrics or {}).get("operating_point", {}) for v, vr in results.variants.items()}
    rates = {v: validation_rates(Layout(results.root).predictions(v)) for v in blocks}
    rows = [
        ("Threshold on P(Malignant), chosen on validation", lambda v: format_ci(blocks[v].get("threshold"))),
        ("How chosen", lambda v: THRESHOLD_RULE.get(blocks[v].get("rule"), "not recorded")),
        ("Threshold caveat",
         lambda v: threshold_caveat(blocks[v]) or ("none" if blocks[v].get("reliable") is True else "n/a")),
        ("Target sensitivity (validation)", lambda v: format_ci(blocks[v].get("target_sensitivity"))),
        ("Malignant sensitivity at the operating point (validation)",
         lambda v: format_ci(blocks[v].get("val_sensitivity"))),
        ("Malignant specificity at the operating point (validation)",
         lambda v: format_ci(None if rates[v] is None else rates[v].specificity)),
        (HEADLINE_TITLES["test_sensitivity"] + " (test)", lambda v: format_ci(blocks[v].get("test_sensitivity"))),
        (HEADLINE_TITLES["test_specificity"] + " (test)", lambda v: format_ci(blocks[v].get("test_specificity"))),
    ]
    return [{"quantity": title, **{v: cell(v) for v in blocks}} for title, cell in rows]


def threshold_caveats(results: Results) -> list[str]:
    """``<variant title>: UNRELIABLE Malignant threshold: <reason>.`` for each variant whose metrics.json marks
    its threshold unreliable, for the page to show as warnings beside :func:`operating_point_rows`."""
    blocks = {v: (vr.eval_metrics or {}).get("operating_point") for v, vr in results.variants.items()}
    caveats = {v: threshold_caveat(block) for v, block in blocks.items()}
    return [f"{VARIANT_TITLES.get(v, v)}: {caveat}" for v, caveat in caveats.items() if caveat]


def calibration_rows(results: Results) -> list[dict[str, str]]:
    """Temperature and expected calibration error before/after scaling, per variant."""
    keys = ("temperature", "ece_before", "ece_after")
    blocks = {v: (vr.eval_metrics or {}).get("calibration", {}) for v, vr in results.variants.items()}
    return [{"quantity": key, **{v: format_ci(blocks[v].get(key)) for v in blocks}} for key in keys]


def localization_rows(results: Results) -> list[dict[str, str]]:
    """Grad-CAM localisation (model vs centred-Gaussian baseline, all lesion images) per variant."""
    blocks = {
        v: {kind: (vr.explain_metrics or {}).get(kind, {}).get("overall", {}) for kind in ("model", "baseline")}
        for v, vr in results.variants.items()
    }
    names = _ordered_keys([b["model"] for b in blocks.values()])
    rows = []
    for name in names:
        if name == "n":
            continue
        row = {"metric": name}
        for variant, block in blocks.items():
            row[f"{variant} Grad-CAM"] = format_ci(block["model"].get(name))
            row[f"{variant} baseline"] = format_ci(block["baseline"].get(name))
        rows.append(row)
    return rows


def figure_pairs(results: Results) -> list[tuple[str, dict[str, Path | None]]]:
    """(title, {variant: PNG path or None when absent}) for each figure shown side by side."""
    pairs = []
    for title, relative in EVAL_FIGURES:
        paths = {v: vr.plots_dir / relative for v, vr in results.variants.items()}
        pairs.append((title, {v: p if p.is_file() else None for v, p in paths.items()}))
    return pairs


def gradcam_figures(results: Results, variant: str) -> list[Path]:
    """The per-(class, outcome) Grad-CAM gallery PNGs of ``variant`` (overview excluded), sorted."""
    folder = results.variants[variant].plots_dir / "gradcam"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.png") if p.name != "overview.png")


# --- helpers ----------------------------------------------------------------------------------------------


def _predict(gray: np.ndarray, fitted: Callable[[int], Fitted], *, name: str, layout: Layout,
             variant: str) -> AppPrediction:
    """Score a radiograph with ``infer.predict_images`` (the CLI's engine), overlay included, in memory.

    ``gray`` is the full decode (shown, and the overlay's canvas); ``fitted`` decodes it for the model's input
    size as ``infer`` does, so the app's probabilities are the CLI's for the same file."""
    from assurexray.serving.infer import predict_images  # torch-heavy; see decode_upload

    if variant not in VARIANTS:
        raise ValueError(f"model variant {variant!r} is not one of {list(VARIANTS)}.")
    model_path = layout.model(variant)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model not found; run `{RESULTS_COMMAND}` to train it.")
    op_path = layout.operating_point(variant)
    result, overlays = predict_images(
        {name: fitted}, model_path=model_path, operating_point_path=op_path if op_path.is_file() else None,
        gradcam=True, shown={name: gray}, lesion_map=True,
    )
    return AppPrediction(name=name, outcome=result.predictions[0], op=result.operating_point,
                         model_sha256=result.model_sha256, gray=gray, overlay=overlays[name],
                         training_data=result.training_data, lesion_overlay=result.lesion_overlays.get(name),
                         input_check_threshold=None if result.input_check is None else result.input_check.threshold)


@functools.lru_cache(maxsize=8)  # keyed by path, mtime and size: a retrained model is read again
def _checkpoint_data(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    """``meta["data"]`` of the checkpoint at ``path`` (None when it records none), read with
    ``torch.load(weights_only=True)``: no code in the file runs. ``ValueError`` naming an unreadable file."""
    import pickle

    import torch  # see decode_upload

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        # torch.load's errors on a truncated or foreign file vary by version; each is named, none is swallowed
        raise ValueError(f"{Path(path).name} is not a readable checkpoint: {type(err).__name__}") from err
    meta = blob.get("meta") if isinstance(blob, dict) else None
    data = meta.get("data") if isinstance(meta, dict) else None
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, fix=f"run `{RESULTS_COMMAND}` to rewrite it")


def _ordered_keys(blocks: list[Mapping[str, Any]]) -> list[str]:
    """Union of the blocks' keys, first-seen order (a metric present in one variant only is still shown)."""
    return list(dict.fromkeys(key for block in blocks for key in block))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
