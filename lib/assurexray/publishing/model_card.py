"""The model card (markdown), in the sections of Mitchell et al. (``MODEL_CARD_REFERENCE``), from ReportData only.

Every number is read from the pipeline's metrics files or params.yaml (``assurexray.publishing.report_data``) and passes
through the formatters of ``assurexray.core.rendering``. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any, Mapping

from assurexray import DISCLAIMER, __version__
from assurexray.core.rendering import Alert, Bullets, Heading, Para, Table, fmt, fmt_ci, fmt_level, fmt_param, fmt_pct
from assurexray.core.rendering import to_markdown, unavailable
from assurexray.publishing.report_data import VARIANT_TITLES, VARIANTS, ReportData, ci_level, explain_name, lookup
from assurexray.publishing.report_sections import (
    calibration_table,
    caveats,
    center_table,
    data_licence,
    is_synthetic,
    flat_params,
    SENSITIVITY_NOTE,
    gap_text,
    headline_table,
    keys_text,
    lesion_localisation,
    adaptation_section,
    loc_title,
    operating_point_table,
    pairs_text,
    partition_table,
    source_note,
    THRESHOLD_RULE_TEXT,
    threshold_notes,
    versus,
    weights_text,
)
from assurexray.core.schema import DATASET_CITATION
from assurexray.data.splits import grouping_statement

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CARD_REFERENCE", "render_model_card"]

MODEL_CARD_REFERENCE = (
    "Mitchell M. et al., \"Model Cards for Model Reporting\", FAT* 2019, doi:10.1145/3287560.3287596"
)


def render_model_card(data: ReportData) -> str:
    """The model card (markdown), in the sections of Mitchell et al."""
    return to_markdown(_model_card_blocks(data))


def _model_card_blocks(d: ReportData) -> list[Any]:
    model, size = d.params["model"], d.params["prepare"]["image_px"]
    names = ", ".join(d.class_names)
    hashes = "; ".join(f"{VARIANT_TITLES[v]} `{lookup(d.operating_points[v], 'model_sha256') or 'n/a'}`"
                       for v in VARIANTS)
    return [
        Heading(1, "Model card: AssureXRay bone radiograph classifier"),
        Alert(DISCLAIMER),
        Para(f"Sections follow {MODEL_CARD_REFERENCE}. Every number is read from the pipeline's metrics files "
             "or params.yaml; nothing is typed by hand."),
        source_note(d),
        Heading(2, "Model details"),
        Bullets((
            f"**Architecture**: timm `{model['backbone']}` classifier, dropout {fmt_param(model.get('dropout'))} "
            f"before a linear head; one model per data split variant ({_variant_list()}).",
            f"**Weights source**: `{model['pretrained']}`: {weights_text(model['pretrained'])}; then fine-tuned "
            "on the training partition of each variant.",
            f"**Input size**: {fmt_param(size)} x {fmt_param(size)} px; the grayscale radiograph is letterboxed "
            "(aspect kept, zero padding) and replicated to the backbone's input channels.",
            f"**Classes** (output order): {names}.",
            "**Outputs**: temperature-scaled class probabilities and a Malignant flag at a threshold chosen on "
            "validation (values under Quantitative analyses).",
            f"**Version**: assurexray `{__version__}`; checkpoint hash (`model_sha256` of operating_point.json): "
            f"{hashes}.",
            "**Date**: none recorded. The pipeline writes no timestamps, so the same inputs reproduce identical "
            "documents; the checkpoint hash identifies the model.",
            f"**Licence**: package: {_code_licence()}. Data: {data_licence(d)}"
            + ("." if is_synthetic(d) else "; weights trained on it inherit its non-commercial terms."),
            (f"**Dataset citation** (BTXRD, the dataset the pipeline is built for; not used in this run): "
             f"{DATASET_CITATION}" if is_synthetic(d) else f"**Dataset citation**: {DATASET_CITATION}"),
        )),
        Heading(2, "Intended use"),
        Alert(DISCLAIMER),
        Bullets((
            "**Primary use**: research on reproducible medical-imaging machine learning: how a bone-tumour "
            "radiograph classifier generalises to unseen centres, how well calibrated it is, and whether its "
            "explanations point at the lesion.",
            "**Primary users**: machine-learning researchers and engineers.",
            "**NOT FOR CLINICAL USE**: outputs must not inform diagnosis, triage, screening, treatment or any "
            "decision about a patient.",
            "**Out of scope**: clinical decision support of any kind; modalities other than plain radiographs "
            "(CT, MRI); scanners, centres or populations unlike the training data without new validation; "
            "commercial use (BTXRD's licence is non-commercial); lesion measurement or segmentation (Grad-CAM "
            "maps are coarse explanations, not segmentations; the lesion map is the model's estimate of where the "
            "tumour is, for research only).",
        )),
        Heading(2, "Factors"),
        *_factors(d),
        Heading(2, "Metrics"),
        *_metrics_explained(d),
        Heading(2, "Evaluation data"),
        Para("Test partition of each variant; never seen in training, threshold choice or calibration."),
        partition_table(d, ("test",)),
        Heading(2, "Training data"),
        Para("Training and validation partitions (validation selects the checkpoint, fits the temperature and "
             "the Malignant threshold)."),
        Bullets(tuple(f"{VARIANT_TITLES[v]}: {grouping_statement(d.splits[v])}" for v in VARIANTS)),
        partition_table(d, ("train", "val")),
        Bullets(_preprocessing_and_augmentation(d.params['train'].get('augment', {}))),
        Heading(2, "Quantitative analyses"),
        Para(f"Test-set point estimates with {fmt_level(ci_level(d))} bootstrap intervals in brackets."),
        headline_table(d),
        Para(SENSITIVITY_NOTE),
        gap_text(d),
        Para("Malignant operating point (threshold chosen on validation, applied unchanged to test):"),
        operating_point_table(d),
        *threshold_notes(d),
        *adaptation_section(d),
        Para("Calibration (temperature fitted on validation; expected calibration error on test):"),
        calibration_table(d),
        *_localisation_summary(d),
        Heading(2, "Ethical considerations"),
        Bullets((
            (f"**Data licence**: {data_licence(d)}." if is_synthetic(d) else
             f"**Data licence**: {data_licence(d)}. The prepared cache and the weights are derived from it; keep "
             "them for research and do not redistribute them."),
            "**Privacy**: the release is de-identified, but some radiographs carry burned-in text; do not "
            "attempt re-identification and do not publish individual images beyond the licence." + _burned_in(d),
            "**Bias**: images come from a few centres; class mix, scanners and patient populations differ "
            "between them, and the model can learn those differences instead of the disease (see the centre "
            "hold-out gap).",
            "**Automation bias**: a confident wrong answer or a plausible heatmap can mislead a reader; this is "
            "why the tool is NOT FOR CLINICAL USE.",
        )),
        Heading(2, "Caveats and recommendations"),
        Bullets(caveats(d)),
        Alert(DISCLAIMER),
    ]


def _factors(d: ReportData) -> list[Any]:
    a = d.audit
    centers = lookup(d.splits["center"], "centers") or {}
    views = lookup(a, "views")
    grayscale = lookup(a, "leakage", "grayscale_mode_pct_by_center")
    return [
        Bullets((
            f"**Centre and acquisition**: the centre hold-out trains on centre(s) {keys_text(centers.get('train'))} and "
            f"tests on centre(s) {keys_text(centers.get('test'))}, measuring the shift between hospitals, scanners and "
            f"case mix. Grayscale (mode L) share by centre: {pairs_text(grayscale, fmt_pct)}.",
            "**Age**: recorded in the BTXRD metadata but neither used nor evaluated; performance by age group is "
            "unknown, although tumour types differ with age.",
            "**Anatomical site**: the site columns predict the label (leakage), so they are never model inputs; "
            "performance per site is not evaluated.",
            f"**View**: images per view: {pairs_text(views, fmt)}; performance per view is not evaluated.",
        )),
        center_table(d),
    ]


def _metrics_explained(d: ReportData) -> list[Any]:
    e = d.evals[VARIANTS[0]]
    boot = e["bootstrap"]
    return [Bullets((
        "**Macro AUC** (one-vs-rest, primary): threshold-free and weighs each class equally, so a rare class "
        "counts as much as a common one.",
        f"**Malignant sensitivity at an operating point**: threshold chosen on validation for a target sensitivity "
        f"of {fmt(lookup(e, 'operating_point', 'target_sensitivity'))}: {THRESHOLD_RULE_TEXT} Reported with "
        "specificity: a missed malignancy is the costliest error.",
        f"**Calibration**: expected calibration error over {fmt(lookup(e, 'calibration', 'bins'))} bins before and "
        "after temperature scaling; probabilities are only meaningful when calibrated.",
        "**Also**: macro average precision, accuracy, balanced accuracy, macro F1, and per class AUC, AP, "
        "sensitivity, specificity, PPV, NPV and F1.",
        f"**Bootstrap CIs**: {fmt_level(boot.get('ci_level'))} percentile intervals from "
        f"{fmt(boot.get('resamples'))} resamples of the test set. The headline gap between variants (each model "
        "on its own test set) treats the two test sets as independent, which they are not where they share "
        "images; the paired gap scores both models on the test images both sets hold, with one bootstrap "
        "for both, and is the like-for-like figure.",
        "**Localisation**: pointing game, energy inside the lesion, IoU and Dice of the Grad-CAM map (and, for a "
        "model with a lesion head, of its lesion map) against lesion masks, compared with a centred-Gaussian "
        "baseline by paired differences on case-clustered bootstrap resamples; a randomisation sanity check.",
    ))]


def _localisation_summary(d: ReportData) -> list[Any]:
    rows = []
    for v in VARIANTS:
        x = d.explains[v]
        if x is None:
            rows.append((VARIANT_TITLES[v], unavailable("localisation", explain_name(d, v)), "", "", ""))
            continue
        for m in ("pointing_game", "iou@val"):
            model, base = lookup(x, "model", "overall", m), lookup(x, "baseline", "overall", m)
            rows.append((VARIANT_TITLES[v], loc_title(m), fmt_ci(model), fmt_ci(base), versus(model, base)))
    lesion = [block for v in VARIANTS if d.explains[v] is not None
              for block in (Para(f"**{VARIANT_TITLES[v]}**"),
                            *lesion_localisation(d.explains[v], explain_name(d, v)))]
    return [Para("Grad-CAM localisation on annotated tumour test images, model versus centred-Gaussian baseline."),
            Table(("Variant", "Metric", "Model", "Baseline", "Comparison"), tuple(rows)), *lesion]


def _burned_in(d: ReportData) -> str:
    statement = lookup(d.audit, "leakage", "burned_in_text", "statement")
    return f" {statement}" if statement else ""


def _variant_list() -> str:
    return ", ".join(VARIANT_TITLES[v] for v in VARIANTS)


def _code_licence() -> str:
    """The package's licence string from its installed metadata (pyproject.toml ``license``)."""
    try:
        return importlib.metadata.metadata("assurexray").get("License") or "see pyproject.toml"
    except importlib.metadata.PackageNotFoundError:
        logger.warning("assurexray is not installed: the code licence is shown as 'see pyproject.toml'")
        return "see pyproject.toml"


#: Augment keys that change the image at evaluation and inference too (they travel in the checkpoint).
_PREPROCESSING_KEYS = ("clahe", "intensity")


def _preprocessing_and_augmentation(augment: Mapping[str, Any]) -> tuple[str, ...]:
    """Two bullets: CLAHE and intensity standardisation also apply at inference, so they must not read as training-only."""
    pre = {k: v for k, v in augment.items() if k in _PREPROCESSING_KEYS}
    aug = {k: v for k, v in augment.items() if k not in _PREPROCESSING_KEYS}
    return (f"Preprocessing (training, evaluation and inference alike): {flat_params(pre)}.",
            f"Augmentation (training only): {flat_params(aug)}.")
